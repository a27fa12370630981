//! What a process knows of its own memory, from Linux's `/proc` (elsewhere: nothing).

/// A memory figure of a process's `/proc/<pid>/status` (`VmRSS`, `VmHWM`, …), in KiB; `pid` is a process id or
/// `"self"`. `None` where `/proc` does not give it.
pub fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, field)
}

/// This process's resident memory (`VmRSS`), in bytes.
pub fn resident_bytes() -> Option<usize> {
    status_kib("self", "VmRSS").and_then(|k| usize::try_from(k.checked_mul(1024)?).ok())
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let value = l.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_field_in_kib_and_nothing_else() {
        let status = "Name:\tbilling\nVmHWM:\t  123456 kB\nVmRSS:\t   98765 kB\nThreads:\t7\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(123_456));
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(98_765));
        // A prefix of another field's name is not that field, and a field without kB is not a size.
        assert_eq!(parse_status_kib(status, "VmR"), None);
        assert_eq!(parse_status_kib(status, "Threads"), None);
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_a_resident_size() {
        let rss = resident_bytes().expect("VmRSS of this process");
        let peak = status_kib("self", "VmHWM").expect("VmHWM of this process") * 1024;
        assert!(
            rss > 0 && rss as u64 <= peak,
            "VmRSS {rss} against VmHWM {peak}"
        );
    }
}
