//! Store-level checks of the conformance suite: the compare-and-swap register itself.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::{sleep, timeout};

use super::support::*;
use super::Harness;
use crate::error::Error;
use crate::record::LeaseRecord;
use crate::store::{LeaseStore, PutMode, Stored, Version};

/// Compare-and-swap: create twice fails with `AlreadyExists`; an update with a stale version,
/// or of a missing record, fails with `Conflict`; every put returns a version never seen before
/// (also after delete and re-create); a get after a put sees it. If `delete` is `Unsupported`,
/// only the delete part is skipped (and said so on stderr).
///
/// # Panics
///
/// When the store breaks the contract.
pub async fn cas<H: Harness>(h: &H) {
    let s = h.store().await;
    let other = h.store().await;
    let name = unique("cas");
    let mut seen: HashSet<Version> = HashSet::new();
    let mut fresh = |v: &Version, what: &str| {
        assert!(
            seen.insert(v.clone()),
            "cas: {what} returned version {v}, which {name:?} already had",
            name = name
        );
    };

    assert!(
        ok(&name, "get of a missing record", s.get(&name).await).is_none(),
        "cas: get of a never-written name returned a record"
    );
    let missing = s
        .put(&name, &rec("a", 1), PutMode::Update(Version::new("1")))
        .await;
    assert_conflict(&name, "update of a missing record", missing);

    let r1 = rec("a", 1);
    let v1 = ok(&name, "create", s.put(&name, &r1, PutMode::Create).await);
    fresh(&v1, "create");
    let r1 = expect_term_started(&name, "get after create", &other, &r1, &v1).await;

    let again = s.put(&name, &rec("b", 1), PutMode::Create).await;
    assert!(
        matches!(again, Err(Error::AlreadyExists { .. })),
        "cas: a second create of {name:?} must fail with AlreadyExists, got {again:?}"
    );
    expect_record(&name, "get after a refused create", &s, &r1, &v1).await;

    // A new term (another token): the store may raise it.
    let r2 = rec("a", r1.transitions.saturating_add(1));
    let v2 = ok(
        &name,
        "update",
        s.put(&name, &r2, PutMode::Update(v1.clone())).await,
    );
    fresh(&v2, "update");
    let r2 = expect_term_started(&name, "get after update", &other, &r2, &v2).await;
    assert!(
        r2.transitions > r1.transitions,
        "cas: a new term of {name:?} stored token {} after {}",
        r2.transitions,
        r1.transitions
    );
    // A renewal (same token) is stored exactly.
    let mut renewed = r2.clone();
    renewed.renew_time = Some(std::time::SystemTime::now());
    let v2 = ok(
        &name,
        "renewal",
        s.put(&name, &renewed, PutMode::Update(v2.clone())).await,
    );
    fresh(&v2, "a renewal");
    expect_record(&name, "get after a renewal", &other, &renewed, &v2).await;
    let r2 = renewed;

    let stale = other
        .put(&name, &rec("c", 3), PutMode::Update(v1.clone()))
        .await;
    assert_conflict(&name, "update with a stale version", stale);
    let bogus = other
        .put(
            &name,
            &rec("c", 3),
            PutMode::Update(Version::new("no-such-version")),
        )
        .await;
    assert_conflict(&name, "update with a made-up version", bogus);
    expect_record(&name, "get after refused updates", &s, &r2, &v2).await;

    // The same record written twice still gets a new version.
    let v3 = ok(
        &name,
        "update",
        s.put(&name, &r2, PutMode::Update(v2.clone())).await,
    );
    fresh(&v3, "an update writing identical contents");
    expect_record(&name, "get after an identical update", &other, &r2, &v3).await;

    // A version of another name is not a version of this one.
    let name_b = format!("{name}-b");
    let vb = ok(
        &name_b,
        "create",
        s.put(&name_b, &rec("x", 1), PutMode::Create).await,
    );
    if vb != v3 {
        let cross = s
            .put(&name, &rec("x", 9), PutMode::Update(vb.clone()))
            .await;
        assert_conflict(&name, "update with another name's version", cross);
    }

    match s.delete(&name, &v2).await {
        Err(Error::Unsupported { .. }) => {
            eprintln!(
                "conformance::cas: {} does not support delete; skipped the delete checks",
                s.kind()
            );
            return;
        }
        r => assert_conflict(&name, "delete with a stale version", r),
    }
    ok(&name, "delete", s.delete(&name, &v3).await);
    assert!(
        ok(&name, "get after delete", other.get(&name).await).is_none(),
        "cas: get after delete of {name:?} still returned a record"
    );
    let after = s
        .put(&name, &rec("a", 4), PutMode::Update(v3.clone()))
        .await;
    assert_conflict(&name, "update after delete", after);
    let v4 = ok(
        &name,
        "create after delete",
        s.put(&name, &rec("d", 5), PutMode::Create).await,
    );
    fresh(&v4, "a create after delete");
    for old in [&v1, &v2, &v3] {
        let r = other
            .put(&name, &rec("e", 6), PutMode::Update(old.clone()))
            .await;
        assert_conflict(
            &name,
            &format!("update with version {old} from before the delete and re-create"),
            r,
        );
    }
    expect_term_started(&name, "get after re-create", &other, &rec("d", 5), &v4).await;
}

/// Names are isolated: writing one name (including prefixes and near-twins such as `a`,
/// `a/b`, `a.b`, `a_b`, `a-b`, `A`) never changes another. A name the store cannot hold may be
/// refused with `InvalidName` only.
///
/// # Panics
///
/// When the store breaks the contract.
pub async fn names_are_isolated<H: Harness>(h: &H) {
    let s = h.store().await;
    let base = unique("iso");
    let suffixes = ["", "/b", ".b", "_b", "-b", "b", "/b/c", "/", "B"];
    let names: Vec<String> = suffixes
        .iter()
        .map(|sfx| format!("{base}{sfx}"))
        .chain([base.to_uppercase()])
        .collect();
    // One write each, then one more write of every name, checking all others after each.
    let mut held: HashMap<String, (LeaseRecord, Version)> = HashMap::new();
    for round in 0..2u64 {
        for n in &names {
            // Round 0 creates; round 1 renews (the same token, stored exactly).
            let mut r = rec("iso", held.get(n).map_or(1, |(h, _)| h.transitions));
            r.value = Some(format!("{n}|{round}"));
            let mode = match held.get(n) {
                None if round == 0 => PutMode::Create,
                None => continue, // refused as invalid in round 0
                Some((_, v)) => PutMode::Update(v.clone()),
            };
            let creating = mode == PutMode::Create;
            match s.put(n, &r, mode).await {
                Ok(v) => {
                    let r = if creating {
                        expect_term_started(n, "get after create", &s, &r, &v).await
                    } else {
                        r
                    };
                    held.insert(n.clone(), (r, v));
                }
                Err(Error::InvalidName { .. }) if round == 0 => continue,
                Err(e) => panic!(
                    "names_are_isolated: writing {n:?} failed with {e:?}: another name's write \
                     changed it, or the store cannot hold it (which must be InvalidName)"
                ),
            }
            for (m, (r, v)) in &held {
                expect_record(m, &format!("get after writing {n:?}"), &s, r, v).await;
            }
        }
    }
    assert!(
        held.contains_key(&base) && held.contains_key(&format!("{base}-b")),
        "names_are_isolated: plain names like {base:?} must be usable"
    );
}

/// Long (300 characters), unicode and odd names (spaces, `/`, `..`, `%`, a leading dot, the
/// empty name, ...) either round-trip exactly or fail with `InvalidName`: never another error,
/// never a collision between two distinct names.
///
/// # Panics
///
/// When the store breaks the contract.
pub async fn odd_names<H: Harness>(h: &H) {
    let s = h.store().await;
    let p = unique("odd");
    let mut names: Vec<String> = [
        String::new(),
        format!("{p}-{}", "x".repeat(300)),
        format!("{p}-选举-ø-🦀"),
        format!("{p} with spaces"),
        format!("{p}/slash"),
        format!("{p}//double"),
        format!("{p}/../up"),
        format!("{p}/./dot"),
        format!("{p}%2F"),
        format!("{p}%"),
        format!("{p}/"),
        format!("/{p}"),
        format!(".{p}"),
        format!("{p}\\back"),
        format!("{p}:colon"),
        format!("{p}*?\"<>|"),
        format!("{p}\ttab"),
        format!("{p}\nnewline"),
        format!("{p}.lease"),
        format!("{p}~"),
    ]
    .into();
    // Names nobody can make unique per run; written whatever is already there.
    names.extend([".", "..", "/", "%2e%2e"].map(String::from));
    let mut kept: Vec<(String, LeaseRecord, Version)> = Vec::new();
    let mut refused = Vec::new();
    for n in &names {
        let mut r = rec("odd", 1);
        r.value = Some(format!("{p}|{n}"));
        let mut created = false;
        let res = match s.get(n).await {
            Err(Error::InvalidName { .. }) => {
                refused.push(n.clone());
                continue;
            }
            Err(e) => {
                panic!("odd_names: get of {n:?} failed with {e:?}; only InvalidName is allowed")
            }
            Ok(None) => {
                created = true;
                s.put(n, &r, PutMode::Create).await
            }
            Ok(Some(Stored {
                record: old,
                version: v,
                ..
            })) => {
                if let Some(hit) = kept.iter().find(|k| k.1.value == old.value) {
                    panic!(
                        "odd_names: {n:?} and {:?} collide: the first write shows under both",
                        hit.0
                    );
                }
                s.put(n, &r, PutMode::Update(v)).await
            }
        };
        match res {
            Ok(v) => {
                let r = if created {
                    expect_term_started(n, "get after create", &s, &r, &v).await
                } else {
                    r
                };
                kept.push((n.clone(), r, v));
            }
            Err(Error::InvalidName { .. }) => refused.push(n.clone()),
            Err(e) if e.is_conflict() => {
                panic!("odd_names: writing {n:?} conflicted ({e:?}): it collides with a name written before")
            }
            Err(e) => {
                panic!("odd_names: put of {n:?} failed with {e:?}; only InvalidName is allowed")
            }
        }
    }
    for (n, r, v) in &kept {
        expect_record(n, "get after writing every odd name (collision?)", &s, r, v).await;
    }
    assert!(
        !kept.is_empty(),
        "odd_names: the store refused every name, even {:?}",
        names.get(2)
    );
    if !refused.is_empty() {
        eprintln!(
            "conformance::odd_names: {} refused as InvalidName: {refused:?}",
            s.kind()
        );
    }
}

/// Garbage is reported, not repaired: after [`Harness::write_garbage`], `get` fails with
/// `Decode` naming the store and a key, `put` (create or update) does not overwrite it, and an
/// elector over that name never leads and ends `run` with the `Decode` error.
///
/// # Panics
///
/// When the store or the elector breaks the contract.
pub async fn garbage_is_reported<H: Harness>(h: &H) {
    let s = h.store().await;
    let t = h.timings();
    let name = unique("garbage");
    let v1 = ok(
        &name,
        "create",
        s.put(&name, &rec("a", 1), PutMode::Create).await,
    );
    h.write_garbage(&name).await;
    assert_decode(&s, &name, "get after write_garbage").await;

    let create = s.put(&name, &rec("b", 2), PutMode::Create).await;
    assert!(
        matches!(create, Err(Error::AlreadyExists { .. })),
        "garbage_is_reported: create over garbage must fail with AlreadyExists, got {create:?}"
    );
    for v in [
        v1.clone(),
        Version::new("0"),
        Version::new("1"),
        Version::new("garbage"),
    ] {
        let r = s.put(&name, &rec("b", 2), PutMode::Update(v.clone())).await;
        assert!(
            r.is_err(),
            "garbage_is_reported: update with version {v} overwrote the garbage under {name:?}"
        );
        assert_decode(&s, &name, &format!("get after an update with version {v}")).await;
    }

    // An elector over garbage never leads and ends `run` with the Decode error.
    let log = TermLog::default();
    let c = spawn_candidate(
        s.clone(),
        &name,
        format!("{name}-e"),
        &t,
        &log,
        Duration::ZERO,
    );
    let bound = t.lease_duration * 3;
    let res = match timeout(bound, c.task).await {
        Ok(joined) => joined.unwrap_or_else(|e| panic!("garbage_is_reported: run panicked: {e}")),
        Err(_) => panic!(
            "garbage_is_reported: an elector over garbage kept running for {bound:?}; `run` must \
             end with the Decode error"
        ),
    };
    assert!(
        matches!(res, Err(Error::Decode { .. })),
        "garbage_is_reported: run over garbage must return the Decode error, got {res:?}"
    );
    assert!(
        log.terms().is_empty(),
        "garbage_is_reported: an elector over garbage became leader"
    );
    assert_decode(&s, &name, "get after the elector gave up").await;
}

/// Watch (only if the store supports it): yields within [`Timings::watch_latency`](super::Timings::watch_latency) after a put
/// from another store handle, for a create and for an update.
///
/// # Panics
///
/// When the store breaks the contract.
pub async fn watch_yields_after_a_put<H: Harness>(h: &H) {
    let s = h.store().await;
    let writer = h.store().await;
    let name = unique("watch");
    let Some(mut w) = s.watch(&name) else {
        eprintln!(
            "conformance::watch_yields_after_a_put: {} cannot watch; skipped",
            s.kind()
        );
        return;
    };
    let bound = h.timings().watch_latency;
    // Let the subscription settle: a watch may only see changes after it is established.
    sleep(Duration::from_millis(100)).await;
    let v = ok(
        &name,
        "create",
        writer.put(&name, &rec("a", 1), PutMode::Create).await,
    );
    await_watch(&mut w, bound, "a create").await;
    // Drain spurious or duplicate events, then expect one for the update.
    while timeout(Duration::from_millis(100), w.next()).await.is_ok() {}
    ok(
        &name,
        "update",
        writer.put(&name, &rec("a", 2), PutMode::Update(v)).await,
    );
    await_watch(&mut w, bound, "an update").await;
}

/// Sizes are checked before writing: a record with a 2 MiB value either round-trips exactly
/// or is refused with `TooLarge` (naming a limit below its size) leaving nothing behind — by a
/// create and by an update, which then leaves the previous record as it was. Never a record
/// written that readers then cannot read.
///
/// # Panics
///
/// When the store breaks the contract.
pub async fn oversized_records_are_refused<H: Harness>(h: &H) {
    const CHECK: &str = "oversized_records_are_refused";
    let s = h.store().await;
    let name = unique("big");
    let mut big = rec("a", 1);
    big.value = Some("v".repeat(2 << 20));
    let refused = |what: &str, r: &crate::Result<Version>| match r {
        Err(Error::TooLarge {
            store, size, limit, ..
        }) => {
            assert_eq!(
                *store,
                s.kind(),
                "{CHECK}: {what}: TooLarge names another store"
            );
            assert!(
                size > limit,
                "{CHECK}: {what}: TooLarge says {size} bytes is over a limit of {limit}"
            );
            true
        }
        Ok(_) => false,
        Err(e) => panic!("{CHECK}: {what}: expected success or TooLarge, got {e:?}"),
    };
    let created = s.put(&name, &big, PutMode::Create).await;
    if refused("create", &created) {
        assert!(
            ok(&name, "get after a refused create", s.get(&name).await).is_none(),
            "{CHECK}: a refused create left a record behind"
        );
        let v = ok(
            &name,
            "create",
            s.put(&name, &rec("a", 1), PutMode::Create).await,
        );
        let small = expect_term_started(&name, "get after create", &s, &rec("a", 1), &v).await;
        let mut big = big.clone();
        big.transitions = small.transitions;
        let updated = s.put(&name, &big, PutMode::Update(v.clone())).await;
        assert!(
            refused("update", &updated),
            "{CHECK}: the store refused a large create but took the same record as an update"
        );
        expect_record(&name, "get after a refused update", &s, &small, &v).await;
    } else {
        let v = ok(&name, "create", created);
        match s.get(&name).await {
            Ok(Some(got)) => {
                assert_eq!(got.version, v, "{CHECK}: another version than put returned");
                assert_eq!(
                    got.record.value, big.value,
                    "{CHECK}: the 2 MiB value did not come back exactly"
                );
            }
            other => panic!("{CHECK}: a 2 MiB record was written but reads back as {other:?}"),
        }
    }
}

/// Watch events (only if the store can watch): every write — create, renewal, a new term,
/// release, delete — is followed within [`Timings::watch_latency`](super::Timings::watch_latency)
/// by an event that reports it: its `Put` (the exact version `put` returned and the record as
/// stored), `Deleted`, or a `Hint`; `Put`s never go back to an older version. A store that
/// claims [`Capabilities::watch_every_write`](crate::Capabilities) must report every write,
/// renewals included (its followers stop polling); others are only checked for what they do
/// report.
///
/// # Panics
///
/// When an event reports a version that was never written, an older version after a newer
/// one, a record other than the one stored, or (for a store claiming every write) nothing.
pub async fn watch_reports_writes_in_order<H: Harness>(h: &H) {
    const CHECK: &str = "watch_reports_writes_in_order";
    let s = h.store().await;
    let writer = h.store().await;
    let name = unique("events");
    let Some(mut w) = s.watch(&name) else {
        eprintln!("conformance::{CHECK}: {} cannot watch; skipped", s.kind());
        return;
    };
    let every = s.capabilities().watch_every_write;
    let latency = h.timings().watch_latency;
    // Give a watch that connects asynchronously time to be in place.
    sleep(Duration::from_millis(200)).await;
    let mut written: Vec<(Version, Option<LeaseRecord>)> = Vec::new();
    let mut last_put: Option<usize> = None;
    // Writes, each followed by the events that come within the latency bound.
    let r1 = rec("a", 1);
    let v1 = ok(
        &name,
        "create",
        writer.put(&name, &r1, PutMode::Create).await,
    );
    let r1 = expect_term_started(&name, "get after create", &writer, &r1, &v1).await;
    written.push((v1.clone(), Some(r1.clone())));
    drain(&mut w, &written, &mut last_put, every, latency, "a create").await;
    let mut renewed = r1.clone();
    renewed.renew_time = Some(std::time::SystemTime::now());
    let v2 = ok(
        &name,
        "renewal",
        writer.put(&name, &renewed, PutMode::Update(v1)).await,
    );
    written.push((v2.clone(), Some(renewed.clone())));
    drain(&mut w, &written, &mut last_put, every, latency, "a renewal").await;
    let next = rec("b", renewed.transitions.saturating_add(1));
    let v3 = ok(
        &name,
        "new term",
        writer.put(&name, &next, PutMode::Update(v2)).await,
    );
    let next = expect_term_started(&name, "get after a new term", &writer, &next, &v3).await;
    written.push((v3.clone(), Some(next.clone())));
    drain(
        &mut w,
        &written,
        &mut last_put,
        every,
        latency,
        "a new term",
    )
    .await;
    let mut vacant = next.clone();
    vacant.holder = None;
    let v4 = ok(
        &name,
        "release",
        writer.put(&name, &vacant, PutMode::Update(v3)).await,
    );
    // A store may write a release in its own form (Kubernetes writes client-go's): compare
    // events with what a read returns.
    let vacant = match writer.get(&name).await {
        Ok(Some(s)) if s.version == v4 => s.record,
        other => panic!("{CHECK}: reading the release back: {other:?}"),
    };
    written.push((v4.clone(), Some(vacant)));
    drain(&mut w, &written, &mut last_put, every, latency, "a release").await;
    match writer.delete(&name, &v4).await {
        Ok(()) => {
            written.push((Version::new(""), None));
            drain(&mut w, &written, &mut last_put, every, latency, "a delete").await;
        }
        Err(Error::Unsupported { .. }) => {}
        Err(e) => panic!("{CHECK}: delete: {e}"),
    }
}

/// Takes the events that arrive within `latency` (until one reports the latest write) and
/// checks each against what was `written` (newest last; `None`: deleted).
async fn drain(
    w: &mut crate::WatchStream,
    written: &[(Version, Option<LeaseRecord>)],
    last_put: &mut Option<usize>,
    every: bool,
    latency: Duration,
    what: &str,
) {
    const CHECK: &str = "watch_reports_writes_in_order";
    let newest = written.len() - 1;
    let deadline = tokio::time::Instant::now() + latency;
    loop {
        let event = match tokio::time::timeout_at(deadline, w.next()).await {
            Err(_) => {
                assert!(
                    !every,
                    "{CHECK}: nothing reported {what} within {latency:?}, but the store \
                     claims its watch reports every write"
                );
                return;
            }
            Ok(None) => panic!("{CHECK}: the watch ended after {what}"),
            Ok(Some(Err(e))) => panic!("{CHECK}: the watch failed after {what}: {e}"),
            Ok(Some(Ok(e))) => e,
        };
        match event {
            crate::WatchEvent::Hint => return,
            crate::WatchEvent::Deleted => {
                assert!(
                    written[newest].1.is_none(),
                    "{CHECK}: Deleted reported after {what}, but the record exists"
                );
                return;
            }
            crate::WatchEvent::Put(stored) => {
                let Some(i) = written.iter().position(|(v, _)| *v == stored.version) else {
                    panic!(
                        "{CHECK}: after {what}, a Put of version {} that no write returned",
                        stored.version
                    );
                };
                assert!(
                    last_put.is_none_or(|l| i >= l),
                    "{CHECK}: after {what}, a Put of an older version ({}) after a newer one",
                    stored.version
                );
                *last_put = Some(i);
                let want = written[i].1.as_ref().unwrap_or_else(|| {
                    panic!(
                        "{CHECK}: a Put of version {} of a deleted record",
                        stored.version
                    )
                });
                let got = &stored.record;
                assert!(
                    got.holder == want.holder
                        && got.transitions == want.transitions
                        && got.lease_duration == want.lease_duration
                        && got.value == want.value,
                    "{CHECK}: after {what}, the Put of {} carries {got:?}, but {want:?} was stored",
                    stored.version
                );
                if i == newest {
                    return;
                }
            }
        }
    }
}
