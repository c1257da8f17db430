//! Session keys: which session an update belongs to (ARCHITECTURE.md, "Keys").

use std::fmt;
use std::sync::Arc;

use crate::inline_key::InlineKey;

/// What an update says about who sent it and where. Implement it for your update type to use
/// the built-in key strategies.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not say who sent an update or in which chat, so no built-in session key applies",
    note = "implement `typed_session::UpdateKeys` for `{Self}`, or build the middleware with `SessionMiddleware::with_key(store, KeyStrategy::custom(..))`"
)]
pub trait UpdateKeys {
    /// The id of the user the update comes from (Telegram's `from.id`).
    fn user_id(&self) -> Option<i64>;
    /// The id of the chat the update belongs to (Telegram's `chat.id`).
    fn chat_id(&self) -> Option<i64>;

    /// The update's own id, the same on every delivery of it (Telegram's `update_id`), by
    /// which a delivery of an update whose writes are saved already is recognised and not
    /// applied again. `None` (the default): no such recognition.
    fn update_id(&self) -> Option<i64> {
        None
    }
}

/// The built-in key strategies, as named in `#[session(key = "...")]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyKind {
    /// `"{from.id}:{chat.id}"`: one session per user per chat (Telegraf's default).
    UserInChat,
    /// `"{chat.id}"`: one session per chat, shared by its members.
    Chat,
    /// `"{from.id}"`: one session per user, across chats.
    User,
}

impl KeyKind {
    /// The strategy's name, as written in the attribute.
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::UserInChat => "user_in_chat",
            KeyKind::Chat => "chat",
            KeyKind::User => "user",
        }
    }

    /// Where the keys of user `user` are, under this strategy: the one key of their own
    /// (per user; per chat, their private chat with the bot, whose id is theirs), or the
    /// prefix of every key of theirs (per user per chat: `"{user}:"`).
    pub(crate) fn keys_of_user(self, user: i64) -> UserKeys {
        match self {
            KeyKind::UserInChat => UserKeys::Prefix(format!("{user}:")),
            KeyKind::User | KeyKind::Chat => UserKeys::Exact(user.to_string()),
        }
    }

    /// The key of `update`, after `prefix`.
    fn key_of<U: UpdateKeys>(self, update: &U, prefix: &str) -> Option<InlineKey> {
        let (first, second) = match self {
            KeyKind::UserInChat => (update.user_id()?, Some(update.chat_id()?)),
            KeyKind::Chat => (update.chat_id()?, None),
            KeyKind::User => (update.user_id()?, None),
        };
        // The ids are written by `itoa` (`core::fmt` cost more than the rest of the key), and
        // the parts straight into the key, inside it up to 30 bytes.
        let (mut digits, mut more) = (itoa::Buffer::new(), itoa::Buffer::new());
        let first = digits.format(first);
        Some(match second {
            Some(id) => InlineKey::concat(&[prefix, first, ":", more.format(id)]),
            None => InlineKey::concat(&[prefix, first]),
        })
    }
}

/// The keys of one user under a built-in strategy (see [`KeyKind::keys_of_user`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UserKeys {
    /// This one key.
    Exact(String),
    /// Every key that starts with this.
    Prefix(String),
}

/// The key of an update, after a prefix (the namespace of a session type and `:`).
type KeyFn<U> = dyn Fn(&U, &str) -> Option<InlineKey> + Send + Sync;

/// Maps an update to its session key, or to `None` when it has none.
///
/// An update with no key gets no session: asking for one returns
/// [`SessionError::NoKey`](crate::SessionError::NoKey), and nothing is read or written.
///
/// # Example
///
/// ```
/// use typed_session::KeyStrategy;
/// use typed_session::telegram::Update;
///
/// let update = Update::text(1, 7, -100, "hi");
/// assert_eq!(KeyStrategy::user_in_chat().key_of(&update).as_deref(), Some("7:-100"));
/// assert_eq!(KeyStrategy::chat().key_of(&update).as_deref(), Some("-100"));
/// let by_lang = KeyStrategy::custom("lang", |u: &Update| Some(format!("lang:{}", u.update_id % 2)));
/// assert_eq!(by_lang.key_of(&update).as_deref(), Some("lang:1"));
/// ```
pub struct KeyStrategy<U> {
    name: &'static str,
    /// The built-in strategy, if it is one: it tells which keys are a user's.
    kind: Option<KeyKind>,
    f: Arc<KeyFn<U>>,
    /// The update's id, where the update type says it.
    id: Option<Arc<IdFn<U>>>,
}

type IdFn<U> = dyn Fn(&U) -> Option<i64> + Send + Sync;

impl<U> Clone for KeyStrategy<U> {
    fn clone(&self) -> Self {
        KeyStrategy {
            name: self.name,
            kind: self.kind,
            f: Arc::clone(&self.f),
            id: self.id.clone(),
        }
    }
}

impl<U> fmt::Debug for KeyStrategy<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyStrategy").field(&self.name).finish()
    }
}

impl<U: UpdateKeys + 'static> KeyStrategy<U> {
    /// One session per user per chat: `"{from.id}:{chat.id}"`.
    pub fn user_in_chat() -> Self {
        Self::builtin(KeyKind::UserInChat)
    }

    /// One session per chat: `"{chat.id}"`.
    pub fn chat() -> Self {
        Self::builtin(KeyKind::Chat)
    }

    /// One session per user: `"{from.id}"`.
    pub fn user() -> Self {
        Self::builtin(KeyKind::User)
    }

    /// The strategy named by a [`KeyKind`].
    pub fn builtin(kind: KeyKind) -> Self {
        KeyStrategy {
            name: kind.name(),
            kind: Some(kind),
            f: Arc::new(move |u: &U, prefix: &str| kind.key_of(u, prefix)),
            id: Some(Arc::new(|u: &U| u.update_id())),
        }
    }
}

impl<U> KeyStrategy<U> {
    /// A key computed by a closure; `name` appears in error messages.
    pub fn custom(
        name: &'static str,
        f: impl Fn(&U) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        KeyStrategy {
            name,
            kind: None,
            f: Arc::new(move |u: &U, prefix: &str| {
                f(u).map(|key| {
                    if prefix.is_empty() {
                        InlineKey::from(key)
                    } else {
                        InlineKey::from(format!("{prefix}{key}"))
                    }
                })
            }),
            id: None,
        }
    }

    /// The key of `update`, if it has one.
    pub fn key_of(&self, update: &U) -> Option<String> {
        (self.f)(update, "").map(|k| k.as_str().to_owned())
    }

    /// The key `update` is stored under: `prefix` (a namespace and `:`), then its key.
    pub(crate) fn stored_key_of(&self, update: &U, prefix: &str) -> Option<InlineKey> {
        (self.f)(update, prefix)
    }

    /// Also reads each update's own id, the same on every delivery (Telegram's
    /// `update_id`), so that a delivery of an update already saved is not applied again. The
    /// built-in strategies read [`UpdateKeys::update_id`]; a custom key reads none unless
    /// given one here.
    pub fn with_update_id(
        mut self,
        id: impl Fn(&U) -> Option<i64> + Send + Sync + 'static,
    ) -> Self {
        self.id = Some(Arc::new(id));
        self
    }

    /// The update's own id, if the strategy reads one.
    pub(crate) fn update_id_of(&self, update: &U) -> Option<i64> {
        self.id.as_ref().and_then(|id| id(update))
    }

    /// The strategy's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The built-in strategy this is, if it is one.
    pub fn kind(&self) -> Option<KeyKind> {
        self.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ids(Option<i64>, Option<i64>);

    impl UpdateKeys for Ids {
        fn user_id(&self) -> Option<i64> {
            self.0
        }
        fn chat_id(&self) -> Option<i64> {
            self.1
        }
    }

    #[test]
    fn builtin_keys_format_the_extremes_of_i64() {
        let ids = Ids(Some(i64::MIN), Some(i64::MAX));
        let key = |kind: KeyKind| kind.key_of(&ids, "").map(|k| k.to_string());
        assert_eq!(
            key(KeyKind::UserInChat).as_deref(),
            Some("-9223372036854775808:9223372036854775807")
        );
        assert_eq!(key(KeyKind::Chat).as_deref(), Some("9223372036854775807"));
        assert_eq!(key(KeyKind::User).as_deref(), Some("-9223372036854775808"));
    }

    #[test]
    fn a_missing_id_is_no_key() {
        assert_eq!(KeyKind::UserInChat.key_of(&Ids(Some(1), None), ""), None);
        assert_eq!(KeyKind::Chat.key_of(&Ids(Some(1), None), ""), None);
        assert_eq!(KeyKind::User.key_of(&Ids(None, Some(1)), ""), None);
    }

    #[test]
    fn a_prefix_of_any_length_comes_first() {
        let ids = Ids(Some(7), Some(-100));
        assert_eq!(
            KeyKind::UserInChat.key_of(&ids, "Profile:").as_deref(),
            Some("Profile:7:-100")
        );
        let long = format!("{}:", "n".repeat(200));
        assert_eq!(
            KeyKind::Chat.key_of(&ids, &long).as_deref(),
            Some(format!("{long}-100").as_str())
        );
        assert_eq!(KeyKind::User.key_of(&Ids(None, Some(1)), &long), None);
    }

    #[test]
    fn ids_are_written_as_display_writes_them() {
        for id in [
            0,
            7,
            -7,
            10,
            -100,
            1_000_001,
            i64::MAX,
            i64::MIN,
            i64::MIN + 1,
        ] {
            let ids = Ids(Some(id), Some(i64::MIN));
            let key = KeyKind::UserInChat.key_of(&ids, "Ns:");
            assert_eq!(
                key.as_deref(),
                Some(format!("Ns:{id}:{}", i64::MIN).as_str())
            );
        }
    }
}
