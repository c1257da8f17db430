//! [`UpdateKeys`] for teloxide-core's `Update`: the table of which updates have which keys is
//! in the parent module's docs.
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

    fn update_id(&self) -> Option<i64> {
        Some(i64::from(self.id.0))
    }

    fn chat_id(&self) -> Option<i64> {
        self.chat().map(|chat| chat.id.0)
    }
}
