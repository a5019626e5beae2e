//! The accounts store against a real Postgres: refresh-token rotation, reuse detection and
//! revocation, principals, API keys and their use, and the Stripe/HubSpot events (dedupe,
//! ordering, matching). Requires `DATABASE_URL`.

use crate::common;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use iace::store::PgStore;
use iace_actors::accounts::{
    ApiKeyInfo, BillingAction, BillingChange, BillingEvent, CrmChange, CrmContactFacts, CrmEvent,
    CrmField, CrmLink, EventsStored, KeyTier, NewApiKey, NewRefreshToken, OrgPatch, Plan,
    Principal, Role, Rotation, Subject, User,
};
use iace_actors::catalog::Organization;
use iace_actors::ports::accounts::{
    ApiKeyStore, BillingStore, CrmStore, OrganizationStore, SessionStore, UserStore,
};
use iace_actors::ports::{PageRequest, QueryStore};
use serde_json::json;
use uuid::Uuid;

fn t0() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

async fn store() -> PgStore {
    let (_, pool) = common::db::migrated_pool().await;
    PgStore::new(pool)
}

async fn org(store: &PgStore, name: &str) -> Uuid {
    let org = Organization {
        id: Uuid::new_v4(),
        name: name.into(),
        created_at: t0(),
    };
    store
        .create_organization(
            &org,
            Uuid::new_v4(),
            &format!("hash-{}", org.id),
            "iace_abc",
        )
        .await
        .unwrap();
    org.id
}

async fn user(store: &PgStore, org: Uuid, email: &str, role: Role) -> User {
    let user = User {
        id: Uuid::new_v4(),
        organization_id: org,
        email: email.into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        role,
        created_at: t0(),
        disabled_at: None,
    };
    assert!(store.insert_user(&user).await.unwrap());
    user
}

fn token(user: &User, family: Uuid, hash: &str, issued: DateTime<Utc>) -> NewRefreshToken {
    NewRefreshToken {
        id: Uuid::new_v4(),
        family_id: family,
        user_id: user.id,
        organization_id: user.organization_id,
        token_hash: hash.into(),
        issued_at: issued,
        expires_at: issued + Duration::days(30),
    }
}

/// The next token of a rotation: family, user and organization are the store's to fill.
fn next(hash: &str, issued: DateTime<Utc>) -> NewRefreshToken {
    NewRefreshToken {
        id: Uuid::new_v4(),
        family_id: Uuid::nil(),
        user_id: Uuid::nil(),
        organization_id: Uuid::nil(),
        token_hash: hash.into(),
        issued_at: issued,
        expires_at: issued + Duration::days(30),
    }
}

/// Logs `user` in: a new family with one token.
async fn login(store: &PgStore, user: &User, hash: &str, at: DateTime<Utc>) -> Uuid {
    let family = Uuid::new_v4();
    store
        .insert_refresh_token(&token(user, family, hash, at))
        .await
        .unwrap();
    family
}

async fn revoke_reasons(store: &PgStore, family: Uuid) -> Vec<Option<String>> {
    sqlx::query_scalar("SELECT revoke_reason FROM refresh_token WHERE family_id = $1 ORDER BY id")
        .bind(family)
        .fetch_all(store.pool())
        .await
        .unwrap()
}

fn rotated(r: Rotation) -> (User, Uuid) {
    match r {
        Rotation::Rotated { user, family_id } => (user, family_id),
        other => panic!("expected a rotation, got {other:?}"),
    }
}

#[tokio::test]
async fn refresh_tokens_rotate_in_a_chain_and_reuse_revokes_the_family() {
    let s = store().await;
    let org = org(&s, "Acme").await;
    let u = user(&s, org, "ana@example.com", Role::Admin).await;
    let now = t0();
    let family = login(&s, &u, "A", now).await;

    let (got, fam) = rotated(
        s.rotate_refresh_token("A", &next("B", now), now)
            .await
            .unwrap(),
    );
    assert_eq!((got, fam), (u.clone(), family));
    // The next token took the family, user and organization of the presented one.
    let (f, uid, o): (Uuid, Uuid, Uuid) = sqlx::query_as(
        "SELECT family_id, user_id, organization_id FROM refresh_token WHERE token_hash = 'B'",
    )
    .fetch_one(s.pool())
    .await
    .unwrap();
    assert_eq!((f, uid, o), (family, u.id, org));

    // The user's current role comes back with the rotation.
    sqlx::query("UPDATE app_user SET role = 'member' WHERE id = $1")
        .bind(u.id)
        .execute(s.pool())
        .await
        .unwrap();
    let later = now + Duration::minutes(10);
    let (got, fam) = rotated(
        s.rotate_refresh_token("B", &next("C", later), later)
            .await
            .unwrap(),
    );
    assert_eq!((got.role, fam), (Role::Member, family));

    let p = s
        .user_principal(u.id, family, later)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.org, org);
    assert_eq!(
        p.subject,
        Subject::User {
            user: u.id,
            session: family
        }
    );
    assert_eq!(p.role, Role::Member);
    assert_eq!(p.key_tier, None);
    assert_eq!(p.account.id, org);
    assert_eq!(p.account.name, "Acme");
    assert_eq!(p.account.plan, Plan::Free);

    // A replays its old token: the whole family dies, C included.
    assert_eq!(
        s.rotate_refresh_token("A", &next("X", later), later)
            .await
            .unwrap(),
        Rotation::Reused {
            user_id: u.id,
            family_id: family
        }
    );
    assert_eq!(
        s.rotate_refresh_token("C", &next("D", later), later)
            .await
            .unwrap(),
        Rotation::Invalid
    );
    assert_eq!(s.user_principal(u.id, family, later).await.unwrap(), None);
    assert_eq!(
        revoke_reasons(&s, family).await,
        vec![Some("reuse".to_owned()); 3]
    );
    // Revoked now, so a further replay is simply invalid; nothing was issued for X or D.
    assert_eq!(
        s.rotate_refresh_token("A", &next("Y", later), later)
            .await
            .unwrap(),
        Rotation::Invalid
    );
    let issued: i64 = sqlx::query_scalar("SELECT count(*) FROM refresh_token")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(issued, 3);
    assert_eq!(
        s.rotate_refresh_token("unknown", &next("Z", later), later)
            .await
            .unwrap(),
        Rotation::Invalid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_rotations_of_one_token_one_wins_and_the_other_is_reuse() {
    let s = store().await;
    let org = org(&s, "Acme").await;
    let u = user(&s, org, "ana@example.com", Role::Owner).await;
    let now = t0();
    // Two open connections, so that both rotations reach the server at once.
    let warm = (
        s.pool().acquire().await.unwrap(),
        s.pool().acquire().await.unwrap(),
    );
    drop(warm);
    for round in 0..20 {
        let presented = format!("A{round}");
        let family = login(&s, &u, &presented, now).await;
        let rotate = |next_hash: String| {
            let (s, presented) = (s.clone(), presented.clone());
            tokio::spawn(async move {
                s.rotate_refresh_token(&presented, &next(&next_hash, now), now)
                    .await
                    .unwrap()
            })
        };
        let (r1, r2) = (rotate(format!("B{round}")), rotate(format!("C{round}")));
        let results = [r1.await.unwrap(), r2.await.unwrap()];
        let wins = results
            .iter()
            .filter(|r| matches!(r, Rotation::Rotated { .. }))
            .count();
        let reuses = results
            .iter()
            .filter(|r| {
                **r == Rotation::Reused {
                    user_id: u.id,
                    family_id: family,
                }
            })
            .count();
        assert_eq!((wins, reuses), (1, 1), "round {round}: {results:?}");
        // Reuse revoked the family, including the token the winner got.
        assert_eq!(s.user_principal(u.id, family, now).await.unwrap(), None);
        assert_eq!(
            revoke_reasons(&s, family).await,
            vec![Some("reuse".to_owned()); 2]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_racing_a_refresh_leaves_no_live_token_in_the_family() {
    let s = store().await;
    let org = org(&s, "Acme").await;
    let u = user(&s, org, "ana@example.com", Role::Owner).await;
    let now = t0();
    for round in 0..20 {
        let (a, b) = (format!("A{round}"), format!("B{round}"));
        let family = login(&s, &u, &a, now).await;
        rotated(
            s.rotate_refresh_token(&a, &next(&b, now), now)
                .await
                .unwrap(),
        );
        // The thief replays A while the owner refreshes with B.
        let rotate = |presented: String, next_hash: String| {
            let s = s.clone();
            tokio::spawn(async move {
                s.rotate_refresh_token(&presented, &next(&next_hash, now), now)
                    .await
                    .unwrap()
            })
        };
        let replay = rotate(a, format!("X{round}"));
        let refresh = rotate(b, format!("C{round}"));
        let (replay, refresh) = (replay.await.unwrap(), refresh.await.unwrap());
        assert_eq!(
            replay,
            Rotation::Reused {
                user_id: u.id,
                family_id: family
            }
        );
        assert!(
            matches!(refresh, Rotation::Rotated { .. } | Rotation::Invalid),
            "{refresh:?}"
        );
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM refresh_token WHERE family_id = $1 AND revoked_at IS NULL",
        )
        .bind(family)
        .fetch_one(s.pool())
        .await
        .unwrap();
        assert_eq!(live, 0, "round {round}: {refresh:?}");
        assert_eq!(s.user_principal(u.id, family, now).await.unwrap(), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_replays_refreshes_and_logouts_of_a_family_neither_fail_nor_deadlock() {
    let s = store().await;
    let org = org(&s, "Acme").await;
    let u = user(&s, org, "ana@example.com", Role::Owner).await;
    let now = t0();
    for round in 0..10 {
        let (a, b) = (format!("A{round}"), format!("B{round}"));
        let family = login(&s, &u, &a, now).await;
        rotated(
            s.rotate_refresh_token(&a, &next(&b, now), now)
                .await
                .unwrap(),
        );
        let spawn_rotate = |presented: String, next_hash: String| {
            let s = s.clone();
            tokio::spawn(async move {
                s.rotate_refresh_token(&presented, &next(&next_hash, now), now)
                    .await
                    .map(|_| ())
            })
        };
        let replay = spawn_rotate(a.clone(), format!("X{round}"));
        let refresh = spawn_rotate(b.clone(), format!("C{round}"));
        let logout = {
            let (s, b) = (s.clone(), b.clone());
            tokio::spawn(async move { s.revoke_refresh_token(&b, now).await.map(|_| ()) })
        };
        let logout_old = {
            let (s, a) = (s.clone(), a.clone());
            tokio::spawn(async move { s.revoke_refresh_token(&a, now).await.map(|_| ()) })
        };
        let logout_all = {
            let s = s.clone();
            let user = u.id;
            tokio::spawn(async move { s.revoke_user_sessions(user, now).await.map(|_| ()) })
        };
        for task in [replay, refresh, logout, logout_old, logout_all] {
            task.await.unwrap().unwrap();
        }
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM refresh_token WHERE family_id = $1 AND revoked_at IS NULL",
        )
        .bind(family)
        .fetch_one(s.pool())
        .await
        .unwrap();
        assert_eq!(live, 0, "round {round}");
    }
}

#[tokio::test]
async fn expired_tokens_and_disabled_users_cannot_refresh() {
    let s = store().await;
    let org = org(&s, "Acme").await;
    let u = user(&s, org, "ana@example.com", Role::Member).await;
    let now = t0();
    let family = Uuid::new_v4();
    let mut old = token(&u, family, "old", now - Duration::days(31));
    old.expires_at = now;
    s.insert_refresh_token(&old).await.unwrap();
    assert_eq!(
        s.rotate_refresh_token("old", &next("new", now), now)
            .await
            .unwrap(),
        Rotation::Invalid
    );
    let rotated_at: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT rotated_at FROM refresh_token WHERE token_hash = 'old'")
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert_eq!(rotated_at, None, "nothing changes for an invalid token");

    let family = login(&s, &u, "A", now).await;
    assert!(s.user_principal(u.id, family, now).await.unwrap().is_some());
    // The session ends with its refresh token: its access tokens are refused from then on.
    let expiry = now + Duration::days(30);
    let just_before = expiry - Duration::seconds(1);
    assert!(s
        .user_principal(u.id, family, just_before)
        .await
        .unwrap()
        .is_some());
    assert_eq!(s.user_principal(u.id, family, expiry).await.unwrap(), None);
    sqlx::query("UPDATE app_user SET disabled_at = $2 WHERE id = $1")
        .bind(u.id)
        .bind(now)
        .execute(s.pool())
        .await
        .unwrap();
    assert_eq!(
        s.rotate_refresh_token("A", &next("B", now), now)
            .await
            .unwrap(),
        Rotation::Invalid
    );
    assert_eq!(s.user_principal(u.id, family, now).await.unwrap(), None);
    // Still presentable once re-enabled: the invalid attempt did not rotate it.
    sqlx::query("UPDATE app_user SET disabled_at = NULL WHERE id = $1")
        .bind(u.id)
        .execute(s.pool())
        .await
        .unwrap();
    rotated(
        s.rotate_refresh_token("A", &next("B", now), now)
            .await
            .unwrap(),
    );
}

#[tokio::test]
async fn logout_revokes_the_family() {
    let s = store().await;
    let org = org(&s, "Acme").await;
    let u = user(&s, org, "ana@example.com", Role::Member).await;
    let now = t0();
    let family = login(&s, &u, "A", now).await;
    rotated(
        s.rotate_refresh_token("A", &next("B", now), now)
            .await
            .unwrap(),
    );
    let other = login(&s, &u, "other", now).await;

    assert_eq!(
        s.revoke_refresh_token("B", now).await.unwrap(),
        Some((u.id, family))
    );
    assert_eq!(s.user_principal(u.id, family, now).await.unwrap(), None);
    assert_eq!(
        s.rotate_refresh_token("B", &next("C", now), now)
            .await
            .unwrap(),
        Rotation::Invalid
    );
    assert_eq!(
        revoke_reasons(&s, family).await,
        vec![Some("logout".to_owned()); 2]
    );
    // Once revoked it is no longer live; unknown tokens are nobody's.
    assert_eq!(s.revoke_refresh_token("B", now).await.unwrap(), None);
    assert_eq!(s.revoke_refresh_token("nope", now).await.unwrap(), None);
    // The user's other session is untouched.
    assert!(s.user_principal(u.id, other, now).await.unwrap().is_some());

    // A rotated token presented for logout still names (and ends) its session.
    let f2 = login(&s, &u, "A2", now).await;
    rotated(
        s.rotate_refresh_token("A2", &next("B2", now), now)
            .await
            .unwrap(),
    );
    assert_eq!(
        s.revoke_refresh_token("A2", now).await.unwrap(),
        Some((u.id, f2))
    );
    assert_eq!(s.user_principal(u.id, f2, now).await.unwrap(), None);

    // An expired token is not live, but its family is revoked all the same.
    let f3 = login(&s, &u, "A3", now - Duration::days(40)).await;
    assert_eq!(s.revoke_refresh_token("A3", now).await.unwrap(), None);
    assert_eq!(
        revoke_reasons(&s, f3).await,
        vec![Some("logout".to_owned())]
    );
}

#[tokio::test]
async fn revoking_a_users_sessions_counts_live_families_and_spares_other_users() {
    let s = store().await;
    let org = org(&s, "Acme").await;
    let u = user(&s, org, "ana@example.com", Role::Member).await;
    let v = user(&s, org, "bo@example.com", Role::Member).await;
    let now = t0();
    let f1 = login(&s, &u, "u1", now).await;
    rotated(
        s.rotate_refresh_token("u1", &next("u1b", now), now)
            .await
            .unwrap(),
    );
    let f2 = login(&s, &u, "u2", now).await;
    // An expired session and a revoked one are not counted.
    login(&s, &u, "u3", now - Duration::days(40)).await;
    login(&s, &u, "u4", now).await;
    s.revoke_refresh_token("u4", now).await.unwrap().unwrap();
    let g = login(&s, &v, "v1", now).await;

    assert_eq!(s.revoke_user_sessions(u.id, now).await.unwrap(), 2);
    assert_eq!(s.user_principal(u.id, f1, now).await.unwrap(), None);
    assert_eq!(s.user_principal(u.id, f2, now).await.unwrap(), None);
    assert!(s.user_principal(v.id, g, now).await.unwrap().is_some());
    assert_eq!(
        revoke_reasons(&s, f1).await,
        vec![Some("logout_all".to_owned()); 2]
    );
    assert_eq!(s.revoke_user_sessions(u.id, now).await.unwrap(), 0);
}

#[tokio::test]
async fn a_session_is_only_its_own_users() {
    let s = store().await;
    let org = org(&s, "Acme").await;
    let u = user(&s, org, "ana@example.com", Role::Member).await;
    let v = user(&s, org, "bo@example.com", Role::Member).await;
    let now = t0();
    let family = login(&s, &u, "A", now).await;
    assert_eq!(s.user_principal(v.id, family, now).await.unwrap(), None);
    assert_eq!(
        s.user_principal(u.id, Uuid::new_v4(), now).await.unwrap(),
        None
    );
    assert_eq!(
        s.user_principal(Uuid::new_v4(), family, now).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn users_have_unique_emails() {
    let s = store().await;
    let org = org(&s, "Acme").await;
    let u = user(&s, org, "ana@example.com", Role::Owner).await;
    let mut dup = u.clone();
    dup.id = Uuid::new_v4();
    assert!(!s.insert_user(&dup).await.unwrap());
    assert_eq!(s.user_by_email("ana@example.com").await.unwrap(), Some(u));
    assert_eq!(s.user_by_email("bo@example.com").await.unwrap(), None);
}

#[tokio::test]
async fn organizations_link_and_unlink_a_hubspot_portal() {
    let s = store().await;
    let a = org(&s, "Acme").await;
    let b = org(&s, "Beta").await;
    let acc = s.organization(a).await.unwrap().unwrap();
    assert_eq!(
        (acc.name.as_str(), acc.plan, acc.past_due_since),
        ("Acme", Plan::Free, None)
    );
    assert_eq!(
        (acc.stripe_customer_id, acc.hubspot_portal_id),
        (None, None)
    );
    assert_eq!(s.organization(Uuid::new_v4()).await.unwrap(), None);

    let patch = OrgPatch {
        name: Some("Acme Inc".into()),
        hubspot_portal_id: Some(Some(123)),
    };
    let acc = s
        .update_organization(a, &patch)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (acc.name.as_str(), acc.hubspot_portal_id),
        ("Acme Inc", Some(123))
    );
    // Absent fields stay.
    let acc = s
        .update_organization(a, &OrgPatch::default())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (acc.name.as_str(), acc.hubspot_portal_id),
        ("Acme Inc", Some(123))
    );
    // Another organization's portal is a conflict.
    let steal = OrgPatch {
        name: None,
        hubspot_portal_id: Some(Some(123)),
    };
    assert_eq!(
        s.update_organization(b, &steal).await.unwrap(),
        Err("HubSpot portal 123 is linked to another organization".to_owned())
    );
    // Unlinking frees it.
    let unlink = OrgPatch {
        name: None,
        hubspot_portal_id: Some(None),
    };
    let acc = s
        .update_organization(a, &unlink)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (acc.name.as_str(), acc.hubspot_portal_id),
        ("Acme Inc", None)
    );
    let acc = s
        .update_organization(b, &steal)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(acc.hubspot_portal_id, Some(123));
    assert_eq!(
        s.update_organization(Uuid::new_v4(), &patch).await.unwrap(),
        Ok(None)
    );
}

fn api_key(org: Uuid, created_at: DateTime<Utc>, hash: &str) -> NewApiKey {
    NewApiKey {
        info: ApiKeyInfo {
            id: Uuid::new_v4(),
            organization_id: org,
            name: format!("key {hash}"),
            prefix: "iace_xyz".into(),
            role: Role::Member,
            tier: KeyTier::High,
            created_at,
            last_used_at: None,
            revoked_at: None,
            created_by: Some(Uuid::new_v4()),
        },
        key_hash: hash.into(),
    }
}

async fn last_used(s: &PgStore, id: Uuid) -> Option<DateTime<Utc>> {
    sqlx::query_scalar("SELECT last_used_at FROM api_key WHERE id = $1")
        .bind(id)
        .fetch_one(s.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn api_keys_authenticate_and_record_their_use_at_most_once_a_minute() {
    let s = store().await;
    let org = org(&s, "Acme").await;
    let now = t0();
    let key = api_key(org, now, "h1");
    s.insert_api_key(&key).await.unwrap();

    let p = s.key_principal("h1", now).await.unwrap().unwrap();
    assert_eq!(
        (p.org, p.subject, p.role, p.key_tier),
        (
            org,
            Subject::ApiKey(key.info.id),
            Role::Member,
            Some(KeyTier::High)
        )
    );
    assert_eq!((p.account.id, p.account.plan), (org, Plan::Free));
    assert_eq!(last_used(&s, key.info.id).await, Some(now));

    let p2: Principal = s
        .key_principal("h1", now + Duration::seconds(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p2, p);
    assert_eq!(last_used(&s, key.info.id).await, Some(now));
    let later = now + Duration::seconds(61);
    s.key_principal("h1", later).await.unwrap().unwrap();
    assert_eq!(last_used(&s, key.info.id).await, Some(later));

    // The organization's first key, as created with it: owner, standard tier.
    let first = s
        .key_principal(&format!("hash-{org}"), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.role, first.key_tier),
        (Role::Owner, Some(KeyTier::Standard))
    );

    assert_eq!(s.key_principal("nope", now).await.unwrap(), None);
    s.revoke_api_key(org, key.info.id, later)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.key_principal("h1", later).await.unwrap(), None);
}

#[tokio::test]
async fn api_keys_list_newest_first_and_revoke_within_their_organization() {
    let s = store().await;
    let a = org(&s, "Acme").await;
    let b = org(&s, "Beta").await;
    let now = t0();
    let k1 = api_key(a, now + Duration::seconds(1), "k1");
    let k2 = api_key(a, now + Duration::seconds(2), "k2");
    let kb = api_key(b, now + Duration::seconds(3), "kb");
    for k in [&k1, &k2, &kb] {
        s.insert_api_key(k).await.unwrap();
    }

    let page = PageRequest {
        limit: 100,
        after: None,
    };
    let listed = s.list_api_keys(a, &page).await.unwrap();
    assert_eq!(listed.len(), 3, "the two keys and the organization's first");
    assert_eq!(listed[0], k2.info);
    assert_eq!(listed[1], k1.info);
    assert_eq!(listed[2].name, "default");
    // Pages of two: the second starts after the first's last key and holds the rest.
    let first = PageRequest {
        limit: 2,
        after: None,
    };
    assert_eq!(s.list_api_keys(a, &first).await.unwrap(), listed[..2]);
    let second = PageRequest {
        limit: 2,
        after: Some((k1.info.created_at, k1.info.id)),
    };
    assert_eq!(s.list_api_keys(a, &second).await.unwrap(), listed[2..]);
    assert_eq!(
        s.api_key(a, k1.info.id).await.unwrap(),
        Some(k1.info.clone())
    );
    assert_eq!(s.api_key(a, kb.info.id).await.unwrap(), None, "B's key");

    // Another organization's key is not there.
    assert_eq!(s.revoke_api_key(a, kb.info.id, now).await.unwrap(), None);
    assert_eq!(
        s.revoke_api_key(a, Uuid::new_v4(), now).await.unwrap(),
        None
    );
    assert!(s.key_principal("kb", now).await.unwrap().is_some());

    let at = now + Duration::minutes(5);
    let revoked = s.revoke_api_key(a, k1.info.id, at).await.unwrap().unwrap();
    assert_eq!(
        revoked,
        ApiKeyInfo {
            revoked_at: Some(at),
            ..k1.info.clone()
        }
    );
    // Again: unchanged.
    let again = s
        .revoke_api_key(a, k1.info.id, at + Duration::minutes(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, revoked);
    // Revoked keys are still listed.
    assert_eq!(s.list_api_keys(a, &page).await.unwrap()[1], revoked);
    // B's key, used once above.
    assert_eq!(
        s.list_api_keys(b, &page).await.unwrap()[0],
        ApiKeyInfo {
            last_used_at: Some(now),
            ..kb.info.clone()
        }
    );
}

#[tokio::test]
async fn live_calls_counts_pending_ringing_and_in_progress_calls_of_the_organization() {
    let s = store().await;
    let a = org(&s, "Acme").await;
    let b = org(&s, "Beta").await;
    let now = t0();
    let mut agents = std::collections::HashMap::new();
    for org in [a, b] {
        let agent = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO agent (id, organization_id, name, status, agent_type, created_at, \
               updated_at) VALUES ($1, $2, 'Ana', 'active', 'outbound', $3, $3)",
        )
        .bind(agent)
        .bind(org)
        .bind(now)
        .execute(s.pool())
        .await
        .unwrap();
        agents.insert(org, agent);
    }
    let calls = [
        (a, "pending", None),
        (a, "ringing", None),
        (a, "in_progress", None),
        (a, "completed", Some("hangup")),
        (a, "failed", Some("error")),
        (b, "in_progress", None),
    ];
    for (org, status, end_reason) in calls {
        sqlx::query(
            "INSERT INTO call (id, organization_id, shard, direction, from_number, to_number, \
               agent_id, status, end_reason, version, owner_epoch, ring_timeout_secs, \
               max_duration_secs, created_at, updated_at) \
             VALUES ($1, $2, 0, 'outbound', '+14155550199', '+14155550100', $3, $4, $5, 1, 0, \
               30, 600, $6, $6)",
        )
        .bind(Uuid::new_v4())
        .bind(org)
        .bind(agents[&org])
        .bind(status)
        .bind(end_reason)
        .bind(now)
        .execute(s.pool())
        .await
        .unwrap();
    }
    assert_eq!(OrganizationStore::live_calls(&s, a).await.unwrap(), 3);
    assert_eq!(OrganizationStore::live_calls(&s, b).await.unwrap(), 1);
    assert_eq!(
        OrganizationStore::live_calls(&s, Uuid::new_v4())
            .await
            .unwrap(),
        0
    );
}

fn billing(
    id: &str,
    created: DateTime<Utc>,
    customer: &str,
    org: Option<Uuid>,
    action: BillingAction,
) -> BillingEvent {
    BillingEvent {
        event_id: id.into(),
        event_type: "customer.subscription.updated".into(),
        created,
        payload: json!({"id": id}),
        change: Some(BillingChange {
            customer: customer.into(),
            organization: org,
            action,
        }),
    }
}

async fn outcome(s: &PgStore, vendor: &str, id: &str) -> (String, Option<Uuid>) {
    sqlx::query_as(
        "SELECT outcome, organization_id FROM account_event WHERE vendor = $1 AND event_id = $2",
    )
    .bind(vendor)
    .bind(id)
    .fetch_one(s.pool())
    .await
    .unwrap()
}

const PRO: BillingAction = BillingAction::Plan {
    plan: Plan::Pro,
    past_due: false,
};

#[tokio::test]
async fn billing_events_set_the_plan_once_and_in_order() {
    let s = store().await;
    let a = org(&s, "Acme").await;
    let t = t0();
    let now = t + Duration::hours(1);

    // Named by the subscription's metadata: the organization adopts the customer.
    assert!(s
        .record_billing_event(&billing("evt_1", t, "cus_1", Some(a), PRO), now)
        .await
        .unwrap());
    let acc = s.organization(a).await.unwrap().unwrap();
    assert_eq!(
        (acc.plan, acc.stripe_customer_id.as_deref()),
        (Plan::Pro, Some("cus_1"))
    );
    assert_eq!(
        outcome(&s, "stripe", "evt_1").await,
        ("applied".into(), Some(a))
    );
    let (payload, received_at, event_type): (serde_json::Value, DateTime<Utc>, String) =
        sqlx::query_as(
            "SELECT payload, received_at, event_type FROM account_event WHERE event_id = 'evt_1'",
        )
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(
        (payload, received_at, event_type.as_str()),
        (json!({"id": "evt_1"}), now, "customer.subscription.updated")
    );

    // The same event again (whatever it says now): nothing.
    let enterprise = BillingAction::Plan {
        plan: Plan::Enterprise,
        past_due: false,
    };
    assert!(!s
        .record_billing_event(&billing("evt_1", t, "cus_1", Some(a), enterprise), now)
        .await
        .unwrap());
    assert_eq!(s.organization(a).await.unwrap().unwrap().plan, Plan::Pro);

    // Found by the customer alone.
    let t2 = t + Duration::seconds(10);
    assert!(s
        .record_billing_event(&billing("evt_2", t2, "cus_1", None, enterprise), now)
        .await
        .unwrap());
    assert_eq!(
        s.organization(a).await.unwrap().unwrap().plan,
        Plan::Enterprise
    );

    // Delivered late: older than what was applied.
    assert!(s
        .record_billing_event(
            &billing("evt_0", t + Duration::seconds(5), "cus_1", None, PRO),
            now
        )
        .await
        .unwrap());
    assert_eq!(
        s.organization(a).await.unwrap().unwrap().plan,
        Plan::Enterprise
    );
    assert_eq!(
        outcome(&s, "stripe", "evt_0").await,
        ("stale".into(), Some(a))
    );
    let plan_event_at: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT plan_event_at FROM organization WHERE id = $1")
            .bind(a)
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert_eq!(plan_event_at, Some(t2));

    // Unknown customer, no organization named.
    assert!(s
        .record_billing_event(&billing("evt_3", t2, "cus_x", None, PRO), now)
        .await
        .unwrap());
    assert_eq!(
        outcome(&s, "stripe", "evt_3").await,
        ("no_match".into(), None)
    );
    // An organization id that does not exist falls back to the customer.
    assert!(s
        .record_billing_event(
            &billing("evt_4", t2, "cus_1", Some(Uuid::new_v4()), PRO),
            now
        )
        .await
        .unwrap());
    assert_eq!(
        outcome(&s, "stripe", "evt_4").await,
        ("applied".into(), Some(a))
    );
    assert_eq!(s.organization(a).await.unwrap().unwrap().plan, Plan::Pro);

    // Events the engine does not act on are stored all the same.
    let mut other = billing("evt_5", t2, "cus_1", None, PRO);
    other.change = None;
    assert!(s.record_billing_event(&other, now).await.unwrap());
    assert_eq!(
        outcome(&s, "stripe", "evt_5").await,
        ("ignored: event type not acted on".into(), None)
    );
}

#[tokio::test]
async fn failed_and_paid_invoices_run_and_end_the_grace_period() {
    let s = store().await;
    let a = org(&s, "Acme").await;
    let t = t0();
    let now = t + Duration::hours(1);
    let ev = |id: &str, secs: i64, action| {
        billing(id, t + Duration::seconds(secs), "cus_1", Some(a), action)
    };

    assert!(s
        .record_billing_event(&ev("e1", 0, PRO), now)
        .await
        .unwrap());
    assert!(s
        .record_billing_event(&ev("e2", 10, BillingAction::PaymentFailed), now)
        .await
        .unwrap());
    let since = Some(t + Duration::seconds(10));
    assert_eq!(
        s.organization(a).await.unwrap().unwrap().past_due_since,
        since
    );
    // A second failure, and the subscription turning past_due, keep the start.
    assert!(s
        .record_billing_event(&ev("e3", 20, BillingAction::PaymentFailed), now)
        .await
        .unwrap());
    let past_due = BillingAction::Plan {
        plan: Plan::Pro,
        past_due: true,
    };
    assert!(s
        .record_billing_event(&ev("e4", 30, past_due), now)
        .await
        .unwrap());
    let acc = s.organization(a).await.unwrap().unwrap();
    assert_eq!((acc.plan, acc.past_due_since), (Plan::Pro, since));
    // Paid: the period ends.
    assert!(s
        .record_billing_event(&ev("e5", 40, BillingAction::Paid), now)
        .await
        .unwrap());
    assert_eq!(
        s.organization(a).await.unwrap().unwrap().past_due_since,
        None
    );
    // An older failure delivered late does not restart it.
    assert!(s
        .record_billing_event(&ev("e6", 35, BillingAction::PaymentFailed), now)
        .await
        .unwrap());
    assert_eq!(outcome(&s, "stripe", "e6").await.0, "stale");
    assert_eq!(
        s.organization(a).await.unwrap().unwrap().past_due_since,
        None
    );
    // past_due straight from a subscription update starts the period at its time.
    assert!(s
        .record_billing_event(&ev("e7", 50, past_due), now)
        .await
        .unwrap());
    assert_eq!(
        s.organization(a).await.unwrap().unwrap().past_due_since,
        Some(t + Duration::seconds(50))
    );
    assert!(s
        .record_billing_event(&ev("e8", 60, PRO), now)
        .await
        .unwrap());
    assert_eq!(
        s.organization(a).await.unwrap().unwrap().past_due_since,
        None
    );
}

#[tokio::test]
async fn billing_events_never_move_a_customer_between_organizations() {
    let s = store().await;
    let a = org(&s, "Acme").await;
    let b = org(&s, "Beta").await;
    let t = t0();
    assert!(s
        .record_billing_event(&billing("e1", t, "cus_a", Some(a), PRO), t)
        .await
        .unwrap());
    // A names another customer than its own.
    let enterprise = BillingAction::Plan {
        plan: Plan::Enterprise,
        past_due: false,
    };
    assert!(s
        .record_billing_event(&billing("e2", t, "cus_other", Some(a), enterprise), t)
        .await
        .unwrap());
    assert_eq!(
        outcome(&s, "stripe", "e2").await,
        ("ignored: customer mismatch".into(), Some(a))
    );
    let acc = s.organization(a).await.unwrap().unwrap();
    assert_eq!(
        (acc.plan, acc.stripe_customer_id.as_deref()),
        (Plan::Pro, Some("cus_a"))
    );
    // B names A's customer: B gets neither it nor the plan, and the event is still stored.
    assert!(s
        .record_billing_event(&billing("e3", t, "cus_a", Some(b), enterprise), t)
        .await
        .unwrap());
    assert_eq!(
        outcome(&s, "stripe", "e3").await,
        (
            "ignored: customer belongs to another organization".into(),
            Some(b)
        )
    );
    let acc = s.organization(b).await.unwrap().unwrap();
    assert_eq!((acc.plan, acc.stripe_customer_id), (Plan::Free, None));
    assert_eq!(s.organization(a).await.unwrap().unwrap().plan, Plan::Pro);
}

async fn customer(s: &PgStore, org: Uuid, phone: &str, metadata: serde_json::Value) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO customer (id, organization_id, phone, email, name, metadata, created_at, \
           updated_at) VALUES ($1, $2, $3, 'old@example.com', 'Old Name', $4, $5, $5)",
    )
    .bind(id)
    .bind(org)
    .bind(phone)
    .bind(metadata)
    .bind(t0() - Duration::days(1))
    .execute(s.pool())
    .await
    .unwrap();
    id
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct CustomerRow {
    phone: String,
    email: Option<String>,
    name: Option<String>,
    metadata: serde_json::Value,
    updated_at: DateTime<Utc>,
}

async fn customer_row(s: &PgStore, id: Uuid) -> CustomerRow {
    sqlx::query_as("SELECT phone, email, name, metadata, updated_at FROM customer WHERE id = $1")
        .bind(id)
        .fetch_one(s.pool())
        .await
        .unwrap()
}

fn crm(id: &str, portal: i64, change: Option<CrmChange>) -> CrmEvent {
    CrmEvent {
        event_id: id.into(),
        event_type: "contact.propertyChange".into(),
        portal_id: portal,
        payload: json!({"eventId": id}),
        change,
    }
}

fn prop(id: &str, contact: &str, field: CrmField, value: &str) -> CrmEvent {
    crm(
        id,
        123,
        Some(CrmChange::Property {
            contact_id: contact.into(),
            field,
            value: value.into(),
        }),
    )
}

/// A store with organization "Acme" linked to HubSpot portal 123 (the portal of `prop`).
async fn store_with_portal() -> (PgStore, Uuid) {
    let s = store().await;
    let a = org(&s, "Acme").await;
    let link = OrgPatch {
        name: None,
        hubspot_portal_id: Some(Some(123)),
    };
    s.update_organization(a, &link).await.unwrap().unwrap();
    (s, a)
}

#[tokio::test]
async fn crm_events_update_linked_customers() {
    let (s, a) = store_with_portal().await;
    let c = customer(
        &s,
        a,
        "+14155550100",
        json!({"hubspot_contact_id": "501", "tier": "gold"}),
    )
    .await;
    let other = customer(&s, a, "+14155550111", json!({})).await;
    let before = customer_row(&s, other).await;
    let now = t0();

    let batch = [
        prop("1", "501", CrmField::Email, "  Ana@Example.COM "),
        prop("2", "501", CrmField::Phone, "+14155550123"),
        prop("3", "501", CrmField::FirstName, " Ana "),
        prop("4", "501", CrmField::Phone, "555"),
        // Another customer's number: ignored, and the rest of the batch still applies.
        prop("5", "501", CrmField::Phone, "+14155550111"),
        prop("6", "501", CrmField::LastName, "Diaz"),
        prop("7", "501", CrmField::Email, "not-an-email"),
        prop("8", "501", CrmField::Phone, ""),
        prop("1", "501", CrmField::Email, "dup@example.com"),
        prop("9", "999", CrmField::Email, "x@example.com"),
        crm("10", 123, None),
        crm(
            "11",
            777,
            Some(CrmChange::Deleted {
                contact_id: "501".into(),
            }),
        ),
    ];
    assert_eq!(
        s.record_crm_events(&batch, false, now).await.unwrap(),
        EventsStored {
            new: 11,
            duplicates: 1,
            unlinked: vec![(123, "999".into())],
        }
    );
    let row = customer_row(&s, c).await;
    assert_eq!(
        row,
        CustomerRow {
            phone: "+14155550123".into(),
            email: Some("ana@example.com".into()),
            name: Some("Ana Diaz".into()),
            metadata: json!({
                "hubspot_contact_id": "501",
                "tier": "gold",
                "hubspot_firstname": "Ana",
                "hubspot_lastname": "Diaz",
            }),
            updated_at: now,
        }
    );
    assert_eq!(customer_row(&s, other).await, before);
    let expect = [
        ("1", "applied", Some(a)),
        ("2", "applied", Some(a)),
        ("3", "applied", Some(a)),
        ("4", "ignored: invalid phone", Some(a)),
        ("5", "ignored: phone taken", Some(a)),
        ("6", "applied", Some(a)),
        ("7", "ignored: invalid email", Some(a)),
        ("8", "ignored: a customer needs a phone", Some(a)),
        ("9", "unlinked_contact", Some(a)),
        ("10", "ignored: event type not acted on", Some(a)),
        ("11", "no_match", None),
    ];
    for (id, want, org) in expect {
        assert_eq!(
            outcome(&s, "hubspot", id).await,
            (want.into(), org),
            "event {id}"
        );
    }

    // A later batch: an old id is a duplicate; clearing names and email; deletion unlinks.
    let later = now + Duration::minutes(1);
    let batch = [
        prop("3", "501", CrmField::FirstName, "Zed"),
        prop("20", "501", CrmField::FirstName, ""),
        prop("21", "501", CrmField::Email, " "),
        crm(
            "22",
            123,
            Some(CrmChange::Deleted {
                contact_id: "501".into(),
            }),
        ),
        prop("23", "501", CrmField::LastName, "Gone"),
    ];
    assert_eq!(
        s.record_crm_events(&batch, false, later).await.unwrap(),
        EventsStored {
            new: 4,
            duplicates: 1,
            unlinked: vec![(123, "501".into())],
        }
    );
    let row = customer_row(&s, c).await;
    assert_eq!(
        row,
        CustomerRow {
            phone: "+14155550123".into(),
            email: None,
            name: Some("Diaz".into()),
            metadata: json!({"tier": "gold", "hubspot_lastname": "Diaz"}),
            updated_at: later,
        }
    );
    assert_eq!(outcome(&s, "hubspot", "22").await.0, "applied");
    assert_eq!(outcome(&s, "hubspot", "23").await.0, "unlinked_contact");
    assert_eq!(
        s.record_crm_events(&[], false, later).await.unwrap(),
        EventsStored::default()
    );
}

#[tokio::test]
async fn a_cleared_name_is_null() {
    let (s, a) = store_with_portal().await;
    let c = customer(&s, a, "+14155550100", json!({"hubspot_contact_id": "7"})).await;
    let batch = [
        prop("1", "7", CrmField::LastName, "Diaz"),
        prop("2", "7", CrmField::LastName, ""),
    ];
    s.record_crm_events(&batch[..1], false, t0()).await.unwrap();
    assert_eq!(customer_row(&s, c).await.name.as_deref(), Some("Diaz"));
    s.record_crm_events(&batch[1..], false, t0()).await.unwrap();
    let row = customer_row(&s, c).await;
    assert_eq!(
        (row.name, row.metadata),
        (None, json!({"hubspot_contact_id": "7"}))
    );
}

#[tokio::test]
async fn an_unlinked_contact_is_linked_to_the_customer_with_its_phone_or_email() {
    let (s, a) = store_with_portal().await;
    let by_phone = customer(&s, a, "+14155550100", json!({"tier": "gold"})).await;
    let now = t0();
    // An event about contact 777 before anyone is linked to it.
    let mut event = prop("40", "777", CrmField::FirstName, "Ana");
    event.payload = json!({"eventId": 40, "objectId": 777});
    let stored = s.record_crm_events(&[event], false, now).await.unwrap();
    assert_eq!(stored.unlinked, vec![(123, "777".into())]);
    assert_eq!(outcome(&s, "hubspot", "40").await.0, "unlinked_contact");

    let facts = CrmContactFacts {
        contact_id: "777".into(),
        email: Some(" Ana@Example.com".into()),
        phone: Some("+14155550100".into()),
        firstname: Some("Ana".into()),
        lastname: Some("Diaz".into()),
    };
    assert_eq!(
        s.link_crm_contact(123, &facts, now).await.unwrap(),
        CrmLink::Linked { customer: by_phone }
    );
    let row = customer_row(&s, by_phone).await;
    assert_eq!(row.email.as_deref(), Some("ana@example.com"));
    assert_eq!(row.name.as_deref(), Some("Ana Diaz"));
    assert_eq!(row.metadata["hubspot_contact_id"], "777");
    assert_eq!(row.metadata["tier"], "gold");
    assert_eq!(
        outcome(&s, "hubspot", "40").await.0,
        "applied: linked through the CRM"
    );
    // Again: already linked, nothing changes.
    assert_eq!(
        s.link_crm_contact(123, &facts, now).await.unwrap(),
        CrmLink::AlreadyLinked { customer: by_phone }
    );

    // By email when the phone matches nobody; two matches link nobody.
    let by_email = customer(&s, a, "+14155550101", json!({})).await;
    sqlx::query("UPDATE customer SET email = 'bo@example.com' WHERE id = $1")
        .bind(by_email)
        .execute(s.pool())
        .await
        .unwrap();
    let bo = CrmContactFacts {
        contact_id: "778".into(),
        email: Some("BO@example.com".into()),
        phone: Some("+19999999999".into()),
        ..Default::default()
    };
    assert_eq!(
        s.link_crm_contact(123, &bo, now).await.unwrap(),
        CrmLink::Linked { customer: by_email }
    );
    let twin_a = customer(&s, a, "+14155550102", json!({})).await;
    let twin_b = customer(&s, a, "+14155550103", json!({})).await;
    sqlx::query("UPDATE customer SET email = 'twin@example.com' WHERE id = ANY($1)")
        .bind(vec![twin_a, twin_b])
        .execute(s.pool())
        .await
        .unwrap();
    let twin = CrmContactFacts {
        contact_id: "779".into(),
        email: Some("twin@example.com".into()),
        ..Default::default()
    };
    assert_eq!(
        s.link_crm_contact(123, &twin, now).await.unwrap(),
        CrmLink::Ambiguous
    );
    let nobody = CrmContactFacts {
        contact_id: "780".into(),
        email: Some("nobody@example.com".into()),
        phone: Some("+14155559999".into()),
        ..Default::default()
    };
    assert_eq!(
        s.link_crm_contact(123, &nobody, now).await.unwrap(),
        CrmLink::NoCustomer
    );
    assert_eq!(
        s.link_crm_contact(999, &nobody, now).await.unwrap(),
        CrmLink::NoOrganization
    );
}

#[tokio::test]
async fn unlinked_contacts_queue_with_their_events_and_claims_are_fenced() {
    let (s, _) = store_with_portal().await;
    let lease = std::time::Duration::from_secs(60);
    let now = t0();
    // Without linking, nothing is queued.
    s.record_crm_events(&[prop("50", "901", CrmField::FirstName, "A")], false, now)
        .await
        .unwrap();
    assert!(s.claim_crm_links(now, lease, 10).await.unwrap().is_empty());
    // With linking, the contact is queued in the events' transaction, once per contact.
    let batch = [
        prop("51", "902", CrmField::FirstName, "B"),
        prop("52", "902", CrmField::LastName, "C"),
        prop("53", "903", CrmField::FirstName, "D"),
    ];
    let stored = s.record_crm_events(&batch, true, now).await.unwrap();
    assert_eq!(stored.unlinked.len(), 2);
    let jobs = s.claim_crm_links(now, lease, 10).await.unwrap();
    let mut contacts: Vec<_> = jobs.iter().map(|j| j.contact_id.as_str()).collect();
    contacts.sort_unstable();
    assert_eq!(contacts, ["902", "903"]);
    assert!(jobs.iter().all(|j| j.portal_id == 123 && j.attempts == 0));
    // Claimed: not due again within the lease, due after it.
    assert!(s.claim_crm_links(now, lease, 10).await.unwrap().is_empty());
    let (j902, j903) = if jobs[0].contact_id == "902" {
        (jobs[0].clone(), jobs[1].clone())
    } else {
        (jobs[1].clone(), jobs[0].clone())
    };
    // A failed lookup is retried at the given time, its attempt counted.
    let retry_at = now + Duration::seconds(30);
    s.retry_crm_link(&j903, retry_at, "hubspot is unavailable")
        .await
        .unwrap();
    assert!(s
        .claim_crm_links(retry_at - Duration::seconds(1), lease, 10)
        .await
        .unwrap()
        .is_empty());
    let again = s.claim_crm_links(retry_at, lease, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].contact_id.as_str(), again[0].attempts),
        ("903", 1)
    );
    // A new event about a claimed contact keeps it queued even if the claim then finishes.
    let later = now + Duration::seconds(5);
    s.record_crm_events(
        &[prop("54", "902", CrmField::Email, "b@example.com")],
        true,
        later,
    )
    .await
    .unwrap();
    s.finish_crm_link(&j902).await.unwrap();
    let requeued = s.claim_crm_links(later, lease, 10).await.unwrap();
    assert_eq!(requeued.len(), 1);
    assert_eq!(requeued[0].contact_id, "902");
    // Finished under its own claim: gone.
    s.finish_crm_link(&requeued[0]).await.unwrap();
    s.finish_crm_link(&again[0]).await.unwrap();
    let far = now + Duration::days(1);
    assert!(s.claim_crm_links(far, lease, 10).await.unwrap().is_empty());
}
