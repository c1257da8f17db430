//! Telegram's updates: a small, Telegram-shaped [`Update`] type for tests, examples and
//! simple bots, and (feature `telegram`) session keys for teloxide-core's `Update`.
//!
//! [`Update`] reads real Bot API `Update` JSON (unknown fields are ignored) and covers what
//! session keys need: who sent an update and in which chat. Bots that need the whole Bot API
//! use teloxide-core's `Update`, which implements [`UpdateKeys`] too (see below); bots on
//! another framework implement [`UpdateKeys`] for its update type.
//!
//! # teloxide-core's `Update` (feature `telegram`)
//!
//! The built-in strategies read `Update::from` and `Update::chat`, so the updates that
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

use serde::{Deserialize, Serialize};

use crate::key::UpdateKeys;

#[cfg(feature = "telegram")]
mod teloxide_keys;

/// A Telegram user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct User {
    /// Unique id of the user or bot.
    pub id: i64,
    /// Whether it is a bot.
    #[serde(default)]
    pub is_bot: bool,
    /// First name.
    #[serde(default)]
    pub first_name: String,
    /// Username, without the `@`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// A Telegram chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Chat {
    /// Unique id; negative for groups and channels.
    pub id: i64,
    /// `"private"`, `"group"`, `"supergroup"` or `"channel"`.
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// A Telegram message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Message {
    /// Id of the message in its chat.
    pub message_id: i64,
    /// Sender; absent for messages sent to channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<User>,
    /// The chat it was sent in.
    pub chat: Chat,
    /// Unix time it was sent.
    #[serde(default)]
    pub date: i64,
    /// Its text, for text messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A press of an inline keyboard button.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CallbackQuery {
    /// Unique id of the query.
    pub id: String,
    /// Who pressed the button.
    pub from: User,
    /// The message with the button; absent for buttons of inline-mode messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    /// The button's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// An inline query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InlineQuery {
    /// Unique id of the query.
    pub id: String,
    /// Who sent it.
    pub from: User,
    /// Its text.
    #[serde(default)]
    pub query: String,
}

/// A Telegram update (a subset of the Bot API's `Update`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Update {
    /// The update's id.
    pub update_id: i64,
    /// A new message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    /// An edited message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_message: Option<Message>,
    /// A new channel post.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_post: Option<Message>,
    /// A callback query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_query: Option<CallbackQuery>,
    /// An inline query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_query: Option<InlineQuery>,
}

impl User {
    /// A user who is not a bot, with the given id and first name; set the other fields as
    /// needed.
    pub fn new(id: i64, first_name: impl Into<String>) -> Self {
        User {
            id,
            is_bot: false,
            first_name: first_name.into(),
            username: None,
        }
    }
}

impl Chat {
    /// A chat of the given id and type (`"private"`, `"group"`, `"supergroup"`, `"channel"`).
    pub fn new(id: i64, kind: impl Into<String>) -> Self {
        Chat {
            id,
            kind: kind.into(),
        }
    }
}

impl Message {
    /// A message with no sender, date or text in `chat`; set the fields it needs.
    ///
    /// ```
    /// use typed_session::UpdateKeys;
    /// use typed_session::telegram::{Chat, Message, Update, User};
    ///
    /// let mut message = Message::new(7, Chat::new(-100, "group"));
    /// message.from = Some(User::new(42, "Ada"));
    /// message.text = Some("hi".into());
    /// let mut update = Update::new(1);
    /// update.message = Some(message);
    /// assert_eq!((update.user_id(), update.chat_id()), (Some(42), Some(-100)));
    /// ```
    pub fn new(message_id: i64, chat: Chat) -> Self {
        Message {
            message_id,
            from: None,
            chat,
            date: 0,
            text: None,
        }
    }
}

impl CallbackQuery {
    /// A press by `from` of a button with no message or data; set the fields it needs.
    pub fn new(id: impl Into<String>, from: User) -> Self {
        CallbackQuery {
            id: id.into(),
            from,
            message: None,
            data: None,
        }
    }
}

impl InlineQuery {
    /// An inline query by `from`.
    pub fn new(id: impl Into<String>, from: User, query: impl Into<String>) -> Self {
        InlineQuery {
            id: id.into(),
            from,
            query: query.into(),
        }
    }
}

impl Update {
    /// An update that carries nothing yet; set the one thing it carries (`message`,
    /// `callback_query`, ...).
    pub fn new(update_id: i64) -> Self {
        Update {
            update_id,
            message: None,
            edited_message: None,
            channel_post: None,
            callback_query: None,
            inline_query: None,
        }
    }

    /// A text message from user `user_id` in chat `chat_id` (a private chat when they are equal).
    ///
    /// ```
    /// use typed_session::telegram::Update;
    /// use typed_session::UpdateKeys;
    ///
    /// let u = Update::text(1, 42, 42, "/start");
    /// assert_eq!((u.user_id(), u.chat_id()), (Some(42), Some(42)));
    /// ```
    pub fn text(update_id: i64, user_id: i64, chat_id: i64, text: &str) -> Self {
        let kind = if user_id == chat_id {
            "private"
        } else {
            "group"
        };
        Update {
            update_id,
            message: Some(Message {
                message_id: update_id,
                from: Some(User {
                    id: user_id,
                    is_bot: false,
                    first_name: format!("user{user_id}"),
                    username: None,
                }),
                chat: Chat {
                    id: chat_id,
                    kind: kind.to_owned(),
                },
                date: 0,
                text: Some(text.to_owned()),
            }),
            edited_message: None,
            channel_post: None,
            callback_query: None,
            inline_query: None,
        }
    }

    /// A post in channel `chat_id`: it has a chat but no sender.
    pub fn channel_post(update_id: i64, chat_id: i64, text: &str) -> Self {
        let mut update = Update::text(update_id, 0, chat_id, text);
        update.channel_post = update.message.take().map(|mut m| {
            m.from = None;
            m.chat.kind = "channel".to_owned();
            m
        });
        update
    }

    /// The message this update carries, of whatever kind.
    pub fn any_message(&self) -> Option<&Message> {
        self.message
            .as_ref()
            .or(self.edited_message.as_ref())
            .or(self.channel_post.as_ref())
            .or_else(|| self.callback_query.as_ref()?.message.as_ref())
    }

    /// The text of its message, if any.
    pub fn text_of(&self) -> Option<&str> {
        self.any_message()?.text.as_deref()
    }
}

impl UpdateKeys for Update {
    fn user_id(&self) -> Option<i64> {
        if let Some(q) = &self.callback_query {
            return Some(q.from.id);
        }
        if let Some(q) = &self.inline_query {
            return Some(q.from.id);
        }
        self.any_message()?.from.as_ref().map(|u| u.id)
    }

    fn update_id(&self) -> Option<i64> {
        Some(self.update_id)
    }

    fn chat_id(&self) -> Option<i64> {
        self.any_message().map(|m| m.chat.id)
    }
}
