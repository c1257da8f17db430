//! The memory store: copies, field-level patches, and expiry that really removes records.

use std::time::Duration;

use typed_session::store::{Patch, Record, Revision, StoreFuture};
use typed_session::telegram::Update;
use typed_session::{Chain, MemoryStore, Session, SessionMiddleware, Store, StoreError};

fn set(field: &'static str, value: &str, ttl: Option<Duration>) -> Patch<'static> {
    Patch::new().set_field(field, value).with_ttl(ttl)
}

#[tokio::test(start_paused = true)]
async fn an_expired_record_is_gone_on_read_and_removed_from_memory() {
    let store = MemoryStore::new();
    store
        .apply("a", &set("x", "1", Some(Duration::from_secs(10))))
        .await
        .expect("apply");

    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(store.load("a").await.expect("load").is_some());
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(store.load("a").await.expect("load"), None);
    assert_eq!(store.len(), 0, "removed, not only hidden");
}

#[tokio::test(start_paused = true)]
async fn writes_sweep_expired_records_that_nobody_reads() {
    let store = MemoryStore::new();
    store
        .apply("short", &set("x", "1", Some(Duration::from_secs(1))))
        .await
        .expect("apply");
    store
        .apply("long", &set("x", "1", Some(Duration::from_secs(100))))
        .await
        .expect("apply");

    tokio::time::advance(Duration::from_secs(2)).await;
    store
        .apply("other", &set("x", "1", None))
        .await
        .expect("apply");

    assert_eq!(store.len(), 2);
    assert!(store.raw("short").is_none());
}

#[tokio::test(start_paused = true)]
async fn expiry_slides_on_every_write() {
    let store = MemoryStore::new();
    let ttl = Some(Duration::from_secs(10));
    store.apply("a", &set("x", "1", ttl)).await.expect("apply");
    tokio::time::advance(Duration::from_secs(8)).await;
    store.apply("a", &set("x", "2", ttl)).await.expect("apply");
    tokio::time::advance(Duration::from_secs(8)).await;

    assert_eq!(store.sweep(), 0);
    assert!(store.load("a").await.expect("load").is_some());
}

#[tokio::test]
async fn a_patch_sets_and_removes_fields_and_leaves_the_rest() {
    let store = MemoryStore::new();
    store
        .apply(
            "k",
            &Patch::new()
                .set_field("a", "1")
                .set_field("b", "2")
                .set_field("c", "3"),
        )
        .await
        .expect("apply");
    store
        .apply(
            "k",
            &Patch::new()
                .set_field("a", "10")
                .remove_field("b")
                .with_ttl(None),
        )
        .await
        .expect("apply");

    let record = store.load("k").await.expect("load").expect("exists");
    assert_eq!(record.len(), 2);
    assert_eq!((record["a"].as_str(), record["c"].as_str()), ("10", "3"));
    store.delete("k").await.expect("delete");
    store
        .delete("k")
        .await
        .expect("deleting a missing record is fine");
    assert_eq!(store.load("k").await.expect("load"), None);
}

#[derive(Session)]
#[session(ttl = "1h")]
struct Expiring {
    hits: u32,
}

#[tokio::test(start_paused = true)]
async fn the_ttl_named_in_the_derive_expires_idle_sessions() {
    let store = MemoryStore::new();
    let chain = Chain::new()
        .with(SessionMiddleware::<Expiring, Update>::new(store.clone()))
        .handler(|ctx| {
            Box::pin(async move {
                ctx.session().await?.update_hits(|h| *h += 1);
                Ok(())
            })
        });
    chain
        .run_update(Update::text(1, 7, 7, "x"))
        .await
        .expect("ok");
    tokio::time::advance(Duration::from_secs(3599)).await;
    assert_eq!(store.sweep(), 0);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(store.sweep(), 1);
}

/// The scenario: `ttl = 60`, set a field, then only read it every 40 s. Renewed on
/// write only, the session is gone at 80 s; renewed on access, it lives as long as it is read,
/// at one renewal per read (each comes more than a quarter of the term after the last).
#[tokio::test(start_paused = true)]
async fn a_session_read_every_40_s_with_a_60_s_ttl_lives_on_access_and_dies_on_write() {
    use typed_session::Renewal;

    #[derive(Session)]
    struct Prefs {
        lang: Option<String>,
    }

    for renewal in [Renewal::OnWrite, Renewal::OnAccess] {
        let store = MemoryStore::new();
        let sessions = SessionMiddleware::<Prefs, Update>::builder(store.clone())
            .ttl(Some(Duration::from_secs(60)))
            .renewal(renewal)
            .build();
        let set = Chain::new().with(sessions.clone()).handler(|ctx| {
            Box::pin(async move {
                ctx.session_of::<Prefs>().await?.set_lang(Some("de".into()));
                Ok(())
            })
        });
        let read = Chain::new().with(sessions.clone()).handler(|ctx| {
            Box::pin(async move {
                let _ = ctx.session_of::<Prefs>().await?.lang();
                Ok(())
            })
        });
        set.run_update(Update::text(1, 7, 7, "/lang de"))
            .await
            .expect("set");
        for (n, id) in (2..=11).enumerate() {
            tokio::time::advance(Duration::from_secs(40)).await;
            let alive = store.load("Prefs:7:7").await.expect("load").is_some();
            match renewal {
                Renewal::OnAccess => assert!(alive, "read {n}, at {} s", 40 * (n + 1)),
                _ if n == 0 => assert!(alive, "40 s after the write"),
                _ => assert!(
                    !alive,
                    "{} s after the write, renewed on write only",
                    40 * (n + 1)
                ),
            }
            read.run_update(Update::text(id, 7, 7, "read"))
                .await
                .expect("read");
        }
        let renewals = sessions.stats().renewals();
        match renewal {
            Renewal::OnAccess => assert_eq!(renewals, 10, "one per read, each 40 s apart"),
            _ => assert_eq!(renewals, 0),
        }
        assert_eq!(
            sessions.stats().writes(),
            1,
            "{renewal:?}: only the set wrote a field"
        );
    }
}

/// A read tells the revision of what it read, taken under the store's lock: the one
/// `revision` tells until the next write.
#[tokio::test(start_paused = true)]
async fn a_read_tells_the_revision_of_the_record_it_read() {
    let store = MemoryStore::new();
    let (record, absent) = store.load_with_revision("a").await.expect("load");
    assert_eq!((record, absent), (None, Revision::Absent));
    store
        .apply("a", &set("x", "1", Some(Duration::from_secs(10))))
        .await
        .expect("apply");
    let (record, read) = store.load_with_revision("a").await.expect("load");
    assert_eq!(record.expect("a record")["x"], "1");
    assert!(read.follows(Revision::Absent), "{read:?}");
    assert_eq!(store.revision("a"), read);
    tokio::time::advance(Duration::from_secs(11)).await;
    let (record, expired) = store.load_with_revision("a").await.expect("load");
    assert_eq!((record, expired), (None, Revision::Absent), "expired");
}

/// A store of one's own that keeps `Store::load_with_revision` as provided: the revision is
/// told only when the store tells the same before and after the load.
#[tokio::test]
async fn the_provided_read_with_its_revision_tells_nothing_when_a_write_came_between() {
    /// A memory store whose loads, when `meddle` is set, first let another writer in.
    struct Meddled {
        inner: MemoryStore,
        meddle: bool,
    }

    impl Store for Meddled {
        fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
            StoreFuture::new(async move {
                if self.meddle {
                    self.inner.apply(key, &set("x", "9", None)).await?;
                }
                self.inner.load(key).await
            })
        }

        fn apply<'a>(
            &'a self,
            key: &'a str,
            patch: &'a Patch<'a>,
        ) -> StoreFuture<'a, Result<(), StoreError>> {
            self.inner.apply(key, patch)
        }

        fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Result<(), StoreError>> {
            self.inner.delete(key)
        }

        fn revision(&self, key: &str) -> Revision {
            self.inner.revision(key)
        }
    }

    for meddle in [false, true] {
        let store = Meddled {
            inner: MemoryStore::new(),
            meddle,
        };
        store.apply("a", &set("x", "1", None)).await.expect("apply");
        let (record, revision) = store.load_with_revision("a").await.expect("load");
        let record = record.expect("a record");
        if meddle {
            assert_eq!(record["x"], "9");
            assert_eq!(revision, Revision::Unknown, "a write came between");
        } else {
            assert_eq!(record["x"], "1");
            assert_eq!(revision, store.revision("a"), "nothing came between");
            assert!(revision.is_known());
        }
    }
}
