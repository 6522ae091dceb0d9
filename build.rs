//! Compiles the JPEG shim (src/decode/jpeg_shim.c) against the libjpeg-turbo that
//! turbojpeg-sys builds from its bundled source.

fn main() {
    println!("cargo:rerun-if-changed=src/decode/jpeg_shim.c");
    let mut build = cc::Build::new();
    build.file("src/decode/jpeg_shim.c").warnings(true);
    // turbojpeg-sys (links = "turbojpeg") says where the library's headers were installed.
    if let Ok(dirs) = std::env::var("DEP_TURBOJPEG_INCLUDE") {
        for dir in dirs.split(',').filter(|d| !d.is_empty()) {
            build.include(dir);
        }
    }
    build.compile("maskserve_jpeg");
}
