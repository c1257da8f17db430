//! Session keys for teloxide-core's [`Update`], the Bot API types most Rust bots use
//! (feature `telegram`).
//!
//! The built-in strategies read [`Update::from`] and [`Update::chat`], so the updates that
//! carry no sender or no chat get no session under a strategy that needs one, and asking for
//! it is [`SessionError::NoKey`](crate::SessionError::NoKey):
//!
//! | update                                  | `user_in_chat` | `chat` | `user` |
//! |-----------------------------------------|:--------------:|:------:|:------:|
//! | message, edited message, callback query on a message | yes | yes | yes |
//! | channel post (no sender)                | no             | yes    | no     |
//! | inline query, chosen inline result      | no             | no     | yes    |
//! | callback query on an inline-mode message | no            | no     | yes    |
//! | poll answer (by a user)                 | no             | no     | yes    |
//!
//! ```
//! use typed_session::teloxide_core::types::Update;
//! use typed_session::UpdateKeys;
//!
//! let update: Update = serde_json::from_str(r#"{
//!     "update_id": 1,
//!     "inline_query": {"id": "7", "from": {"id": 42, "is_bot": false, "first_name": "Ada"},
//!                      "query": "cats", "offset": ""}
//! }"#)?;
//! assert_eq!((update.user_id(), update.chat_id()), (Some(42), None));
//! # Ok::<(), serde_json::Error>(())
//! ```

use teloxide_core::types::Update;

use crate::key::UpdateKeys;

impl UpdateKeys for Update {
    fn user_id(&self) -> Option<i64> {
        // Telegram user ids fit in 52 bits; one that does not is no key rather than a wrong one.
        self.from().and_then(|user| i64::try_from(user.id.0).ok())
    }

    fn chat_id(&self) -> Option<i64> {
        self.chat().map(|chat| chat.id.0)
    }
}
