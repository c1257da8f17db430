//! What the example bots' tests share: reading what was stored and what was sent.

use typed_session::MemoryStore;
use typed_session::testing::BotApiDouble;

/// A stored field of the session under `key`, decoded.
pub(crate) fn stored<T: serde::de::DeserializeOwned>(
    store: &MemoryStore,
    key: &str,
    field: &str,
) -> Option<T> {
    let raw = store.raw(key)?.remove(field)?;
    Some(serde_json::from_str(&raw).expect("stored fields are JSON"))
}

/// The texts the bot sent to `chat`, in order.
pub(crate) fn replies_to(telegram: &BotApiDouble, chat: i64) -> Vec<String> {
    telegram.seen(|seen| {
        seen.sent
            .iter()
            .filter(|message| message.chat_id == chat)
            .map(|message| message.text.clone())
            .collect()
    })
}
