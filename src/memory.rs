//! What the process and its host have of memory: resident set size, the container's limit and
//! what is still available. Read from /proc and the cgroup files (Linux); `None` elsewhere.

use std::path::Path;

/// cgroup v1 reports "no limit" as a huge page-rounded number; anything above this is none.
const NO_LIMIT: u64 = 1 << 60;

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn number(s: &str) -> Option<u64> {
    s.trim().parse().ok().filter(|&v| v < NO_LIMIT)
}

/// `key:   N kB` from /proc/meminfo.
fn meminfo(key: &str) -> Option<u64> {
    let text = read("/proc/meminfo")?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// This process's resident set size in bytes.
pub fn rss_bytes() -> Option<u64> {
    let statm = read("/proc/self/statm")?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).ok().map(|p| pages * p)
}

/// The cgroup's memory limit and current usage (v2, then v1).
fn cgroup() -> Option<(u64, Option<u64>)> {
    if let Some(limit) = read("/sys/fs/cgroup/memory.max").and_then(|s| number(&s)) {
        let used = read("/sys/fs/cgroup/memory.current").and_then(|s| number(&s));
        return Some((limit, used));
    }
    let limit = read("/sys/fs/cgroup/memory/memory.limit_in_bytes").and_then(|s| number(&s))?;
    let used = read("/sys/fs/cgroup/memory/memory.usage_in_bytes").and_then(|s| number(&s));
    Some((limit, used))
}

/// The memory this process may use in all: the container's limit, else the host's RAM.
pub fn limit_bytes() -> Option<u64> {
    let total = meminfo("MemTotal");
    match (cgroup().map(|c| c.0), total) {
        (Some(l), Some(t)) => Some(l.min(t)),
        (l, t) => l.or(t),
    }
}

/// Memory that can still be allocated now: the host's MemAvailable, capped by what the
/// container's limit leaves.
pub fn available_bytes() -> Option<u64> {
    let host = meminfo("MemAvailable");
    let container = cgroup().and_then(|(limit, used)| Some(limit.saturating_sub(used?)));
    match (host, container) {
        (Some(h), Some(c)) => Some(h.min(c)),
        (h, c) => h.or(c),
    }
}

/// Hands freed heap pages back to the system, so that an unloaded model's memory leaves the
/// resident set (glibc keeps freed arenas otherwise).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machine() {
        let rss = rss_bytes().unwrap();
        assert!(rss > 1 << 20, "{rss}");
        let limit = limit_bytes().unwrap();
        assert!(limit > rss);
        assert!(available_bytes().unwrap() <= limit);
        assert_eq!(number("max"), None);
        assert_eq!(number("9223372036854771712"), None);
        assert_eq!(number("1048576\n"), Some(1 << 20));
    }

    #[test]
    fn trimming_returns_freed_pages() {
        let before = rss_bytes().unwrap();
        // Many small blocks (below glibc's mmap threshold) stay in the heap when freed.
        let blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 64 << 10]).collect();
        let grown = rss_bytes().unwrap();
        drop(blocks);
        release_free_memory();
        let after = rss_bytes().unwrap();
        assert!(grown > before + (128 << 20), "{before} {grown}");
        assert!(after < grown - (128 << 20), "{grown} {after}");
    }
}
