//! The run meter (`lib.js` `meter`): wall and CPU time, the rest of the machine's load,
//! peak RSS, medians.

use std::time::Instant;

use typed_session::BoxError;

pub(crate) const HZ: f64 = 100.0;

pub(crate) fn proc_stat_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() < 8 {
        return 0.0;
    }
    f[0] + f[1] + f[2] + f[5] + f[6] + f[7]
}

pub(crate) fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the state letter.
    if f.len() < 13 {
        return 0.0;
    }
    (f[10] + f[11]) / HZ
}

pub(crate) fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    (kb / 1024.0 * 10.0).round() / 10.0
}

pub(crate) struct Measured {
    pub(crate) wall: f64,
    pub(crate) cpu: f64,
    pub(crate) others_pct: f64,
}

pub(crate) async fn measure<F: std::future::Future<Output = Result<(), BoxError>>>(
    run: F,
) -> Result<Measured, BoxError> {
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let (j0, c0, t0) = (proc_stat_busy(), own_cpu_seconds(), Instant::now());
    run.await?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = own_cpu_seconds() - c0;
    let others = ((proc_stat_busy() - j0) / HZ - cpu).max(0.0) / (wall * ncpu) * 100.0;
    Ok(Measured {
        wall,
        cpu,
        others_pct: (others * 10.0).round() / 10.0,
    })
}

pub(crate) fn median(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

pub(crate) fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
