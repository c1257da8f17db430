//! The command line.

use typed_session::BoxError;

pub(crate) struct Options {
    pub(crate) bench: String,
    pub(crate) workload: String,
    pub(crate) variant: String,
    pub(crate) runtime: String,
    pub(crate) store: String,
    pub(crate) updates: usize,
    pub(crate) users: usize,
    pub(crate) runs: usize,
    pub(crate) batch: usize,
    pub(crate) width: usize,
    pub(crate) max_others: f64,
}

pub(crate) fn options() -> Result<Options, BoxError> {
    let mut o = Options {
        bench: "throughput".into(),
        workload: "seq".into(),
        variant: "session".into(),
        runtime: "current-thread".into(),
        store: "memory".into(),
        updates: 0,
        users: 0,
        runs: 0,
        batch: 1000,
        width: 100,
        max_others: 10.0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            return Err(format!("{pair:?}: every flag takes a value").into());
        };
        match flag.as_str() {
            "--bench" => o.bench = value.clone(),
            "--workload" => o.workload = value.clone(),
            "--variant" => o.variant = value.clone(),
            "--runtime" => o.runtime = value.clone(),
            "--store" => o.store = value.clone(),
            "--updates" => o.updates = value.parse()?,
            "--users" => o.users = value.parse()?,
            "--runs" => o.runs = value.parse()?,
            "--batch" => o.batch = value.parse()?,
            "--width" => o.width = value.parse()?,
            "--max_others" => o.max_others = value.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    // The anchors' defaults per part: A 200,000/10,000 x5, C 20,000/1,000, D 20,000/1,000 x3.
    let (updates, users, runs) = match o.bench.as_str() {
        "throughput" => (200_000, 10_000, 5),
        "writes" => (20_000, 1_000, 1),
        _ => (20_000, 1_000, 3),
    };
    o.updates = if o.updates == 0 { updates } else { o.updates };
    o.users = if o.users == 0 { users } else { o.users };
    o.runs = if o.runs == 0 { runs } else { o.runs };
    Ok(o)
}
