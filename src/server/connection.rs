//! Whether a request's client is still connected. actix-web keeps running a handler after its
//! connection closes (actix/actix-web#3462), so an abandoned invocation would still take a
//! backend; the handler asks the socket itself while it waits, and dropping its receiver
//! tells the engine to drop the images not yet run.

use std::any::Any;
use std::io::ErrorKind;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use actix_web::dev::Extensions;

/// The connection's socket, recorded when it is accepted.
#[derive(Debug, Clone, Copy)]
pub struct PeerSocket(RawFd);

/// `HttpServer::on_connect` hook.
pub fn on_connect(conn: &dyn Any, ext: &mut Extensions) {
    if let Some(s) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        ext.insert(PeerSocket(s.as_raw_fd()));
    }
}

impl PeerSocket {
    /// True when the peer has closed or reset the connection. A peek never consumes data, so a
    /// request pipelined behind this one stays for the dispatcher.
    pub fn closed(&self) -> bool {
        // SAFETY: the descriptor belongs to the connection this request arrived on, which the
        // dispatcher keeps open while it polls the request's handler (the only caller);
        // ManuallyDrop keeps us from closing it.
        let socket = ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(self.0) });
        let mut byte = [0u8; 1];
        // tokio made the socket non-blocking: no data yet is WouldBlock.
        match socket.peek(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted),
        }
    }
}
