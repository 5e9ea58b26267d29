//! Process figures for `/metrics`, read from `/proc/self` (Linux): resident memory, CPU time,
//! open file descriptors, threads, start time. Elsewhere the families are simply absent.
//!
//! Names follow the Prometheus client conventions (`process_resident_memory_bytes`,
//! `process_cpu_seconds_total`, ...) so existing dashboards work. CPU ticks are converted with
//! the Linux default of 100 ticks per second (`CLK_TCK`; every mainstream Linux build uses it).

use model::telemetry::Exposition;

const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// Appends the process families to `out`.
pub fn render(out: &mut Exposition) {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(kib) = status_kib(&status, "VmRSS:") {
            out.gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                kib * 1024.0,
            );
        }
        if let Some(kib) = status_kib(&status, "VmHWM:") {
            out.gauge(
                "roaster_process_peak_resident_memory_bytes",
                "Peak resident memory size in bytes since start.",
                kib * 1024.0,
            );
        }
        if let Some(kib) = status_kib(&status, "VmSize:") {
            out.gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                kib * 1024.0,
            );
        }
        if let Some(n) = status_kib(&status, "Threads:") {
            out.gauge(
                "roaster_process_threads",
                "Operating system threads of the process.",
                n,
            );
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some((utime, stime)) = stat_cpu_ticks(&stat)
    {
        out.family(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
        );
        out.sample(
            "process_cpu_seconds_total",
            &[],
            (utime + stime) as f64 / CLOCK_TICKS_PER_SECOND,
        );
        out.family(
            "roaster_process_cpu_seconds_total",
            "counter",
            "CPU time spent in seconds, by mode.",
        );
        out.sample(
            "roaster_process_cpu_seconds_total",
            &[("mode", "user")],
            utime as f64 / CLOCK_TICKS_PER_SECOND,
        );
        out.sample(
            "roaster_process_cpu_seconds_total",
            &[("mode", "system")],
            stime as f64 / CLOCK_TICKS_PER_SECOND,
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        out.gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            dir.count() as f64,
        );
    }
}

/// The number after `key` in `/proc/self/status` (kB for memory lines, a count otherwise).
fn status_kib(status: &str, key: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// `utime` and `stime` (fields 14 and 15) from `/proc/self/stat`. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted after the last `)`.
fn stat_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); utime is field 14, i.e. the 12th here.
    let utime = fields.nth(11)?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_lines() {
        let stat = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 100 0 0";
        assert_eq!(stat_cpu_ticks(stat), Some((250, 50)));
        assert_eq!(
            status_kib("Name:\tx\nVmRSS:\t  2048 kB\n", "VmRSS:"),
            Some(2048.0)
        );
        assert_eq!(status_kib("Name:\tx\n", "VmRSS:"), None);
    }

    #[test]
    fn renders_on_linux() {
        let mut out = Exposition::new();
        render(&mut out);
        let text = out.finish();
        if cfg!(target_os = "linux") {
            assert!(text.contains("process_resident_memory_bytes "), "{text}");
            assert!(text.contains("process_cpu_seconds_total "), "{text}");
        }
    }
}
