//! Tests of the access tokens: lifetimes, rotation, the attacks (alg none, algorithm confusion,
//! tampered claims, foreign keys) and the RFC 8037 Ed25519 vector.

use super::*;
use proptest::prelude::*;

const NOW: i64 = 1_800_000_000;

fn ring(keys: &[(&str, u8)]) -> KeyRing {
    KeyRing::new(
        keys.iter()
            .map(|(kid, b)| Key::hmac(*kid, vec![*b; 32]).unwrap())
            .collect(),
        "iace",
        "iace-api",
    )
    .unwrap()
}

fn claims() -> Claims {
    Claims {
        iss: String::new(),
        aud: String::new(),
        sub: Uuid::from_u128(1),
        org: Uuid::from_u128(2),
        role: "member".into(),
        sid: Uuid::from_u128(5),
        iat: NOW,
        nbf: NOW,
        exp: NOW + 1800,
        jti: Uuid::from_u128(3),
        typ: String::new(),
    }
}

/// HMAC-SHA256 of `input` keyed with `secret` (at least 32 bytes).
fn mac(secret: &[u8], input: &[u8]) -> Vec<u8> {
    Key::hmac("forger", secret.to_vec())
        .unwrap()
        .signature(input)
}

/// A token with an arbitrary header and claims, signed (or not) as given.
fn forge(header: &serde_json::Value, claims: &serde_json::Value, secret: Option<&[u8]>) -> String {
    let head = URL_SAFE_NO_PAD.encode(header.to_string());
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{head}.{body}");
    let sig = secret.map_or(String::new(), |s| {
        URL_SAFE_NO_PAD.encode(mac(s, input.as_bytes()))
    });
    format!("{input}.{sig}")
}

#[test]
fn a_signed_token_verifies_within_its_lifetime_only() {
    let r = ring(&[("k1", 1)]);
    let token = r.sign(claims());
    let got = r.verify(&token, NOW + 10).unwrap();
    assert_eq!(
        (got.sub, got.org, got.role.as_str()),
        (Uuid::from_u128(1), Uuid::from_u128(2), "member")
    );
    assert_eq!(
        (got.iss.as_str(), got.aud.as_str(), got.typ.as_str()),
        ("iace", "iace-api", "access")
    );
    assert_eq!(r.verify(&token, NOW + 1800 + LEEWAY_SECS), Ok(got.clone()));
    assert_eq!(
        r.verify(&token, NOW + 1800 + LEEWAY_SECS + 1),
        Err(TokenError::Expired)
    );
    assert_eq!(
        r.verify(&token, NOW - LEEWAY_SECS - 1),
        Err(TokenError::NotYetValid)
    );
}

#[test]
fn rotation_keeps_old_tokens_valid_until_the_old_key_is_dropped() {
    let old = ring(&[("k1", 1)]);
    let token = old.sign(claims());
    let rotated = ring(&[("k2", 2), ("k1", 1)]);
    assert!(rotated.verify(&token, NOW).is_ok());
    let new_token = rotated.sign(claims());
    let head: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(new_token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(head["kid"], "k2", "the newest key signs");
    assert!(rotated.verify(&new_token, NOW).is_ok());
    assert_eq!(old.verify(&new_token, NOW), Err(TokenError::UnknownKey));
    let dropped = ring(&[("k2", 2)]);
    assert_eq!(dropped.verify(&token, NOW), Err(TokenError::UnknownKey));
}

#[test]
fn attacks_are_refused() {
    let r = ring(&[("k1", 1)]);
    let good = serde_json::to_value({
        let mut c = claims();
        c.iss = "iace".into();
        c.aud = "iace-api".into();
        c.typ = "access".into();
        c
    })
    .unwrap();
    let hs = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "k1"});
    // alg none, with and without a signature part.
    for alg in ["none", "None", "NONE", "RS256", "HS512", "ES256"] {
        let h = serde_json::json!({"alg": alg, "kid": "k1"});
        assert_eq!(
            r.verify(&forge(&h, &good, None), NOW),
            Err(TokenError::Algorithm),
            "{alg}"
        );
        assert_eq!(
            r.verify(&forge(&h, &good, Some(&[1; 32])), NOW),
            Err(TokenError::Algorithm)
        );
    }
    // Signed with another key under our key id.
    assert_eq!(
        r.verify(&forge(&hs, &good, Some(&[9; 32])), NOW),
        Err(TokenError::Signature)
    );
    // No key id.
    let no_kid = serde_json::json!({"alg": "HS256"});
    assert_eq!(
        r.verify(&forge(&no_kid, &good, Some(&[1; 32])), NOW),
        Err(TokenError::UnknownKey)
    );
    // Claims changed after signing.
    let token = r.sign(claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut admin = good.clone();
    admin["role"] = "owner".into();
    let body = URL_SAFE_NO_PAD.encode(admin.to_string());
    parts[1] = &body;
    assert_eq!(r.verify(&parts.join("."), NOW), Err(TokenError::Signature));
    // Right key, wrong party or type.
    for (field, value, err) in [
        ("iss", "someone-else", TokenError::WrongParty),
        ("aud", "another-api", TokenError::WrongParty),
        ("typ", "refresh", TokenError::WrongType),
    ] {
        let mut c = good.clone();
        c[field] = value.into();
        assert_eq!(
            r.verify(&forge(&hs, &c, Some(&[1; 32])), NOW),
            Err(err),
            "{field}"
        );
    }
    // Not a JWT at all (an opaque refresh token, junk).
    for junk in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "rt_0123456789abcdef",
        "..",
        "e30.e30.",
    ] {
        assert!(r.verify(junk, NOW).is_err(), "{junk}");
    }
    assert!(Key::hmac("k", vec![0; 16]).is_err());
    assert!(KeyRing::new(vec![], "i", "a").is_err());
    let shown = format!("{r:?}");
    assert!(shown.contains("k1") && !shown.contains("[1, 1"), "{shown}");
}

/// RFC 8037 appendix A: the Ed25519 key (RFC 8032 test 1) and the A.4 JWS made with it.
const A4_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
const A4_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
const A4_INPUT: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
const A4_SIGNATURE: &str =
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

/// PEM as `openssl genpkey -algorithm ed25519` writes it (RFC 8410 PKCS#8 v1), built by hand
/// from the DER layout so the parser is checked against the format, not against itself.
fn private_pem(seed: &[u8]) -> String {
    let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
    der.extend_from_slice(seed);
    pem("PRIVATE KEY", &der)
}

fn public_pem(key: &[u8]) -> String {
    let mut der = hex::decode("302a300506032b6570032100").unwrap();
    der.extend_from_slice(key);
    pem("PUBLIC KEY", &der)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
}

fn ed_key(seed: u8) -> Key {
    Key::ed25519_pem(&private_pem(&[seed; 32])).unwrap()
}

fn ring_of(keys: Vec<Key>) -> KeyRing {
    KeyRing::new(keys, "iace", "iace-api").unwrap()
}

fn header_of(token: &str) -> serde_json::Value {
    let head = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(head).unwrap()).unwrap()
}

#[test]
fn ed25519_keys_from_pem_reproduce_the_rfc_8037_vector() {
    let d = URL_SAFE_NO_PAD.decode(A4_D).unwrap();
    let key = Key::ed25519_pem(&private_pem(&d)).unwrap();
    assert_eq!(key.alg(), "EdDSA");
    assert!(key.can_sign());
    assert_eq!(
        URL_SAFE_NO_PAD.encode(key.signature(A4_INPUT.as_bytes())),
        A4_SIGNATURE
    );
    let public = Key::ed25519_pem(&public_pem(&URL_SAFE_NO_PAD.decode(A4_X).unwrap())).unwrap();
    assert!(!public.can_sign());
    assert_eq!(public.kid(), key.kid(), "the id is the public key's");
    let sig = URL_SAFE_NO_PAD.decode(A4_SIGNATURE).unwrap();
    assert!(public.check(A4_INPUT.as_bytes(), &sig));
    assert!(!public.check(b"eyJhbGciOiJFZERTQSJ9.e30", &sig));
    assert!(!public.check(A4_INPUT.as_bytes(), &sig[..63]));
    let jwks = ring_of(vec![key, Key::hmac("h", vec![1; 32]).unwrap()]).jwks();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
    assert_eq!(jwks["keys"][0]["x"], A4_X);
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
}

#[test]
fn ed25519_signing_verifies_and_moving_from_a_secret_logs_no_one_out() {
    let hs = ring(&[("k1", 1)]);
    let old = hs.sign(claims());
    let ed = ed_key(7);
    let kid = ed.kid().to_owned();
    let both = ring_of(vec![ed.clone(), Key::hmac("k1", vec![1; 32]).unwrap()]);
    let token = both.sign(claims());
    assert_eq!(header_of(&token)["alg"], "EdDSA");
    assert_eq!(header_of(&token)["kid"], kid.as_str());
    assert_eq!(both.verify(&token, NOW).unwrap().sub, Uuid::from_u128(1));
    assert!(both.verify(&old, NOW).is_ok(), "the secret still verifies");
    // Another service holding only the public key verifies the token.
    let public = Key::ed25519_pem(&public_pem(
        &URL_SAFE_NO_PAD
            .decode(both.jwks()["keys"][0]["x"].as_str().unwrap())
            .unwrap(),
    ))
    .unwrap();
    let verifier = ring_of(vec![ed_key(8), public]);
    assert!(verifier.verify(&token, NOW).is_ok());
    assert_eq!(hs.verify(&token, NOW), Err(TokenError::UnknownKey));
    // A public key cannot be the signing key; ids must differ; junk is refused.
    let public_only = Key::ed25519_pem(&public_pem(ed.verifying_bytes())).unwrap();
    assert!(KeyRing::new(vec![public_only], "i", "a").is_err());
    assert!(KeyRing::new(vec![ed_key(7), ed_key(7)], "i", "a").is_err());
    for junk in [
        "",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        &public_pem(&[0; 32]),
    ] {
        assert!(Key::ed25519_pem(junk).is_err(), "{junk}");
    }
}

#[test]
fn algorithm_confusion_between_the_two_kinds_of_key_is_refused() {
    let ed = ed_key(7);
    let ed_kid = ed.kid().to_owned();
    let r = ring_of(vec![ed.clone(), Key::hmac("k1", vec![1; 32]).unwrap()]);
    let mut good = serde_json::to_value(claims()).unwrap();
    good["iss"] = "iace".into();
    good["aud"] = "iace-api".into();
    good["typ"] = "access".into();
    // HS256 under the Ed25519 key's id, keyed with its public bytes (the classic attack).
    let confused = serde_json::json!({"alg": "HS256", "kid": ed_kid});
    assert_eq!(
        r.verify(&forge(&confused, &good, Some(ed.verifying_bytes())), NOW),
        Err(TokenError::Algorithm)
    );
    // EdDSA under the HMAC key's id.
    let token = r.sign(claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[0] = URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","kid":"k1"}"#);
    assert_eq!(r.verify(&parts.join("."), NOW), Err(TokenError::Algorithm));
    // Signed by another Ed25519 key under our id.
    let other = ring_of(vec![ed_key(9)]);
    let theirs = other.sign(claims());
    let mut parts: Vec<String> = theirs.split('.').map(str::to_owned).collect();
    parts[0] = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"EdDSA","kid":"{ed_kid}"}}"#));
    let head = parts[0].clone();
    let input = format!("{head}.{}", parts[1]);
    parts[2] = URL_SAFE_NO_PAD.encode(ed_key(9).signature(input.as_bytes()));
    assert_eq!(r.verify(&parts.join("."), NOW), Err(TokenError::Signature));
    // Claims changed after signing.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut owner = good.clone();
    owner["role"] = "owner".into();
    parts[1] = URL_SAFE_NO_PAD.encode(owner.to_string());
    assert_eq!(r.verify(&parts.join("."), NOW), Err(TokenError::Signature));
    // An empty or short signature.
    let cut = &token[..token.rfind('.').unwrap() + 1];
    assert_eq!(r.verify(cut, NOW), Err(TokenError::Signature));
}

proptest! {
    #[test]
    fn random_strings_never_verify(token in ".{0,300}") {
        prop_assert!(ring(&[("k1", 1)]).verify(&token, NOW).is_err());
    }
}
