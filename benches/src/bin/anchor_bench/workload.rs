//! The workload, as the anchors' `lib.js` makes it: the user sequence, the update objects,
//! and the `seq`/`conc`/`window` feeding.

use std::sync::Arc;

use typed_session::telegram::{Chat, Message, Update, User};
use typed_session::{BoxError, Chain};

pub(crate) fn mulberry32(mut seed: u32) -> impl FnMut() -> f64 {
    move || {
        seed = seed.wrapping_add(0x6d2b_79f5);
        let mut t = (seed ^ (seed >> 15)).wrapping_mul(1 | seed);
        t = (t.wrapping_add((t ^ (t >> 7)).wrapping_mul(61 | t))) ^ t;
        f64::from(t ^ (t >> 14)) / 4_294_967_296.0
    }
}

pub(crate) fn user_sequence(updates: usize, users: usize) -> Vec<u32> {
    let mut seq: Vec<u32> = (0..updates).map(|i| (i % users) as u32).collect();
    let mut rnd = mulberry32(1);
    for i in (1..updates).rev() {
        let j = (rnd() * (i + 1) as f64).floor() as usize;
        seq.swap(i, j);
    }
    seq
}

pub(crate) fn user_id(u: u32) -> i64 {
    1_000_000 + i64::from(u)
}

pub(crate) fn make_update(i: usize, u: u32) -> Update {
    let id = user_id(u);
    let mut message = Message::new(i as i64 + 1, Chat::new(id, "private"));
    message.from = Some(User::new(id, "U"));
    message.date = 1_700_000_000;
    message.text = Some("hi".into());
    let mut update = Update::new(i as i64 + 1);
    update.message = Some(message);
    update
}

pub(crate) async fn feed(
    chain: &Arc<Chain<Update>>,
    seq: &[u32],
    workload: &str,
    batch: usize,
) -> Result<(), BoxError> {
    if workload == "seq" {
        for (i, &u) in seq.iter().enumerate() {
            chain.run_update(make_update(i, u)).await?;
        }
        return Ok(());
    }
    if workload == "window" {
        let chain = Arc::clone(chain);
        return window(seq, batch, move |i, u| {
            let chain = Arc::clone(&chain);
            async move { chain.run_update(make_update(i, u)).await }
        })
        .await;
    }
    for start in (0..seq.len()).step_by(batch) {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, &u) in seq.iter().enumerate().skip(start).take(batch) {
            let chain = Arc::clone(chain);
            tasks.spawn(async move { chain.run_update(make_update(i, u)).await });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
    }
    Ok(())
}

/// `width` updates always in flight, no barrier (lib.js `feedWindow`): each finished one is
/// replaced by the next.
pub(crate) async fn window<F, Fut>(seq: &[u32], width: usize, run: F) -> Result<(), BoxError>
where
    F: Fn(usize, u32) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for (i, &u) in seq.iter().enumerate() {
        if tasks.len() >= width
            && let Some(done) = tasks.join_next().await
        {
            done??;
        }
        tasks.spawn(run(i, u));
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}
