//! Robot threads yield the CPU to humans.
//!
//! Separate runtimes and queues keep robots from taking the human plane's *queue* slots, but on a
//! saturated machine the kernel still shares the CPU fairly between every runnable thread, and a
//! flood keeps many robot threads runnable. So every robot-plane thread (the robot runtime's
//! workers, ingest's writer threads and UDP readers) lowers its own scheduling priority (its
//! nice value) at start; the human plane keeps the process' priority. Under CFS a nice-10 thread
//! gets about a tenth of the weight of a nice-0 one, so a human request is scheduled almost at
//! once while robots still use every idle cycle. A lower priority can always be set without
//! privileges; failing to set it is logged and otherwise harmless.

/// Sets the calling thread's nice value to `nice` (0 = leave it as it is). Linux applies
/// `setpriority(PRIO_PROCESS, tid)` to that one thread, not the whole process.
pub fn lower_current_thread(nice: i32) {
    if nice == 0 {
        return;
    }
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
        tracing::warn!(error = %e, nice, "Could not lower a robot thread's CPU priority; it competes with the human plane as an equal.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_only_the_calling_thread() {
        let me = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let lowered = std::thread::spawn(|| {
            lower_current_thread(7);
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, 7.max(me), "the spawned thread runs at nice 7");
        let after = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        assert_eq!(after, me, "the calling thread keeps its priority");
    }

    #[test]
    fn zero_leaves_the_thread_alone() {
        let got = std::thread::spawn(|| {
            let before = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
            lower_current_thread(0);
            (
                before,
                rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(got.0, got.1);
    }
}
