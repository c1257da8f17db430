//! What the webhook does with a body before any handler runs: parse it as an update and read
//! its keys. Any bytes: an error or an update, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use typed_session::UpdateKeys;
use typed_session::telegram::Update;

fuzz_target!(|body: &[u8]| {
    if let Ok(update) = serde_json::from_slice::<Update>(body) {
        let _ = (update.user_id(), update.chat_id(), update.update_id());
        let _ = update.text_of();
    }
});
