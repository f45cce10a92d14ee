//! What the benches print beside wall time: this process's CPU time, minor page
//! faults and peak resident memory (Linux; zeros or none elsewhere).

/// CPU time and minor page faults of this process so far, from /proc/self/stat
/// (Linux; zeros elsewhere). On shared VMs system time and faults show the cost of
/// memory churn and thread hand-offs that wall time alone hides.
#[derive(Default, Clone, Copy)]
pub struct Usage {
    pub user_s: f64,
    pub sys_s: f64,
    pub minflt: f64,
}

impl Usage {
    pub fn now() -> Usage {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return Usage::default();
        };
        // Fields after the parenthesised command name; minflt, utime, stime are
        // fields 10, 14 and 15 of the whole line.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<f64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0.0))
            .collect();
        let tick = 100.0; // USER_HZ on Linux
        let get = |i: usize| f.get(i - 3).copied().unwrap_or(0.0);
        Usage {
            user_s: get(14) / tick,
            sys_s: get(15) / tick,
            minflt: get(10),
        }
    }

    /// Per-run mean of what was used since `start`.
    #[allow(dead_code)] // the corpus bench measures whole processes
    pub fn since(start: Usage, runs: usize) -> Usage {
        let end = Usage::now();
        let n = runs.max(1) as f64;
        Usage {
            user_s: (end.user_s - start.user_s) / n,
            sys_s: (end.sys_s - start.sys_s) / n,
            minflt: (end.minflt - start.minflt) / n,
        }
    }
}

/// The peak resident memory of this process so far, in MB.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
