//! Access tokens end to end through the public API: what the user service issues, every service's
//! verifier accepts, and every forgery we know of is refused with its own [`TokenError`]; then the
//! auth layer in front of a tiny inner service.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeDelta, Utc};
use ed25519_dalek::pkcs8::DecodePrivateKey;
use hmac::Mac;
use repit_platform::RequestContextLayer;
use repit_platform::auth::{
    AuthLayer, Caller, KeySet, Role, RoleClaim, SigningKey, Subject, TokenError, TokenIssuer,
    Verifier,
};
use repit_platform::request_context::RequestContext;
use tonic::Code;
use tonic_types::StatusExt;
use tower::{Layer, ServiceExt};

const ISSUER: &str = "repit-user";
const AUDIENCE: &str = "repit";

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).expect("instant")
}

/// A key valid since before both `t0` and the real now (the layer tests use the real clock).
fn key(kid: &str) -> SigningKey {
    let since = t0().min(Utc::now()) - TimeDelta::hours(1);
    SigningKey::generate(kid, since).expect("key")
}

fn issuer() -> TokenIssuer {
    TokenIssuer::new(ISSUER, AUDIENCE, Duration::from_secs(600)).expect("issuer")
}

fn subject() -> Subject {
    Subject {
        user_id: "user-1".into(),
        session_id: "session-1".into(),
        roles: vec![
            RoleClaim::new(Role::Tutor),
            RoleClaim::new(Role::Parent).with_tutor("tutor-9"),
        ],
        children: vec!["student-3".into()],
        amr: vec!["pwd".into()],
        auth_time: t0() - TimeDelta::minutes(5),
        time_zone: "Europe/Moscow".into(),
    }
}

fn token(key: &SigningKey, at: DateTime<Utc>) -> String {
    issuer().issue(key, &subject(), at).expect("issued").token
}

fn verifier(keys: &[&SigningKey]) -> Verifier {
    let set = KeySet::new(keys.iter().map(|k| k.verifying())).expect("key set");
    Verifier::new(ISSUER, AUDIENCE, set)
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The claims a genuine token would carry at `t0`.
fn claims_json() -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "sid": "session-1",
        "iat": t0().timestamp(), "nbf": t0().timestamp(), "exp": t0().timestamp() + 600,
        "jti": "7b0c4a56-1f7e-4c4e-9d43-0d2f1d0d5f10", "auth_time": t0().timestamp(),
        "amr": ["pwd"], "roles": [{"role": "admin"}],
    })
}

/// A compact JWS of arbitrary header and claims signed with `key`'s private half: what an attacker
/// holding the key (or we, to build malformed-but-signed tokens) could produce.
fn sign_raw(key: &SigningKey, header: &serde_json::Value, claims: &serde_json::Value) -> String {
    use ed25519_dalek::Signer;
    let der = key.to_pkcs8_der().expect("der");
    let dalek = ed25519_dalek::SigningKey::from_pkcs8_der(&der).expect("pkcs8");
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let signature = dalek.sign(input.as_bytes()).to_bytes();
    format!("{input}.{}", b64(signature))
}

fn eddsa_header(kid: &str) -> serde_json::Value {
    serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid})
}

#[test]
fn a_good_token_verifies_and_yields_the_caller() {
    let k1 = key("k1");
    let verifier = verifier(&[&k1]);
    let caller = verifier
        .verify(&token(&k1, t0()), t0() + TimeDelta::minutes(3))
        .expect("valid");
    assert_eq!(
        caller,
        Caller {
            user_id: "user-1".into(),
            session_id: "session-1".into(),
            roles: subject().roles,
            children: vec!["student-3".into()],
            time_zone: Some("Europe/Moscow".into()),
            expires_at: t0() + TimeDelta::minutes(10),
        }
    );
    assert_eq!(caller.tutor_scope(), vec!["user-1", "tutor-9"]);
    assert!(caller.is_parent_of("student-3"));
}

#[test]
fn a_token_built_by_hand_with_the_right_key_verifies_too() {
    // The JWS form is standard: our own hand-made encoding of the same claims passes.
    let k1 = key("k1");
    let token = sign_raw(&k1, &eddsa_header("k1"), &claims_json());
    let caller = verifier(&[&k1]).verify(&token, t0()).expect("valid");
    assert!(caller.is_platform_admin());
}

#[test]
fn a_tampered_payload_is_refused_as_a_bad_signature() {
    let k1 = key("k1");
    let genuine = token(&k1, t0());
    let parts: Vec<&str> = genuine.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
    claims["roles"] = serde_json::json!([{"role": "admin"}]);
    let forged = format!("{}.{}.{}", parts[0], b64(claims.to_string()), parts[2]);
    assert_eq!(
        verifier(&[&k1]).verify(&forged, t0()).err(),
        Some(TokenError::Signature)
    );
}

#[test]
fn a_tampered_signature_is_refused() {
    let k1 = key("k1");
    let verifier = verifier(&[&k1]);
    let genuine = token(&k1, t0());
    let (input, signature) = genuine.rsplit_once('.').expect("three parts");
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).expect("b64");
    bytes[10] ^= 0x01;
    let flipped = format!("{input}.{}", b64(&bytes));
    assert_eq!(
        verifier.verify(&flipped, t0()).err(),
        Some(TokenError::Signature)
    );
    let truncated = format!("{input}.{}", b64(&bytes[..63]));
    assert_eq!(
        verifier.verify(&truncated, t0()).err(),
        Some(TokenError::Signature)
    );
    // The genuine token is unaffected by the failed attempts.
    assert!(verifier.verify(&genuine, t0()).is_ok());
}

#[test]
fn an_expired_token_is_refused_after_the_leeway() {
    let k1 = key("k1");
    let verifier = verifier(&[&k1]);
    let token = token(&k1, t0());
    let exp = t0() + TimeDelta::minutes(10);
    assert!(
        verifier
            .verify(&token, exp + TimeDelta::seconds(29))
            .is_ok()
    );
    assert_eq!(
        verifier.verify(&token, exp + TimeDelta::seconds(30)).err(),
        Some(TokenError::Expired)
    );
}

#[test]
fn a_token_not_valid_yet_is_refused_before_the_leeway() {
    let k1 = key("k1");
    let verifier = verifier(&[&k1]);
    let token = token(&k1, t0());
    assert_eq!(
        verifier.verify(&token, t0() - TimeDelta::seconds(31)).err(),
        Some(TokenError::NotYetValid)
    );
    assert!(
        verifier
            .verify(&token, t0() - TimeDelta::seconds(30))
            .is_ok()
    );
}

#[test]
fn alg_none_is_refused() {
    let k1 = key("k1");
    for alg in ["none", "None", "NONE"] {
        let header = serde_json::json!({"alg": alg, "typ": "at+jwt", "kid": "k1"});
        let token = format!(
            "{}.{}.",
            b64(header.to_string()),
            b64(claims_json().to_string())
        );
        assert_eq!(
            verifier(&[&k1]).verify(&token, t0()).err(),
            Some(TokenError::Algorithm),
            "{alg}"
        );
    }
}

#[test]
fn hs256_forged_with_the_public_key_as_hmac_secret_is_refused() {
    let k1 = key("k1");
    let public = k1.verifying();
    let secrets: [Vec<u8>; 3] = [
        public.public_key_bytes().to_vec(),
        public.spki_der(),
        public.jwk_json().into_bytes(),
    ];
    for secret in secrets {
        for alg in ["HS256", "HS384", "RS256", "ES256", "EdDSA "] {
            let header = serde_json::json!({"alg": alg, "typ": "at+jwt", "kid": "k1"});
            let input = format!(
                "{}.{}",
                b64(header.to_string()),
                b64(claims_json().to_string())
            );
            let mut mac =
                hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret).expect("any key length");
            mac.update(input.as_bytes());
            let forged = format!("{input}.{}", b64(mac.finalize().into_bytes()));
            assert_eq!(
                verifier(&[&k1]).verify(&forged, t0()).err(),
                Some(TokenError::Algorithm),
                "{alg}"
            );
        }
    }
}

#[test]
fn a_token_signed_by_an_unknown_key_is_refused() {
    let k1 = key("k1");
    let stranger = key("k9");
    let verifier = verifier(&[&k1]);
    assert_eq!(
        verifier.verify(&token(&stranger, t0()), t0()).err(),
        Some(TokenError::UnknownKey)
    );
    // A stranger claiming our kid fails on the signature.
    let impostor = key("k1");
    assert_eq!(
        verifier.verify(&token(&impostor, t0()), t0()).err(),
        Some(TokenError::Signature)
    );
    // A header carrying its own key (RFC 7515 "jwk") is not followed.
    let mut header = eddsa_header("k9");
    header["jwk"] = serde_json::from_str(&stranger.verifying().jwk_json()).expect("json");
    let embedded = sign_raw(&stranger, &header, &claims_json());
    assert_eq!(
        verifier.verify(&embedded, t0()).err(),
        Some(TokenError::UnknownKey)
    );
    // No kid at all.
    let header = serde_json::json!({"alg": "EdDSA", "typ": "at+jwt"});
    assert_eq!(
        verifier
            .verify(&sign_raw(&k1, &header, &claims_json()), t0())
            .err(),
        Some(TokenError::UnknownKey)
    );
}

#[test]
fn a_token_for_another_audience_or_from_another_issuer_is_refused() {
    let k1 = key("k1");
    let other_audience = TokenIssuer::new(ISSUER, "billing", Duration::from_secs(600))
        .expect("issuer")
        .issue(&k1, &subject(), t0())
        .expect("issued")
        .token;
    let other_issuer = TokenIssuer::new("someone-else", AUDIENCE, Duration::from_secs(600))
        .expect("issuer")
        .issue(&k1, &subject(), t0())
        .expect("issued")
        .token;
    let verifier = verifier(&[&k1]);
    assert_eq!(
        verifier.verify(&other_audience, t0()).err(),
        Some(TokenError::Audience)
    );
    assert_eq!(
        verifier.verify(&other_issuer, t0()).err(),
        Some(TokenError::Issuer)
    );
}

#[test]
fn signed_tokens_that_break_the_contract_are_refused_as_malformed() {
    let k1 = key("k1");
    let verifier = verifier(&[&k1]);
    let mut long_lived = claims_json();
    long_lived["exp"] = serde_json::json!(t0().timestamp() + 16 * 60);
    let mut anonymous = claims_json();
    anonymous["sub"] = serde_json::json!("");
    let mut no_jti = claims_json();
    no_jti.as_object_mut().expect("object").remove("jti");
    let end_of_time = DateTime::<Utc>::MAX_UTC.timestamp();
    let mut overflowing = claims_json();
    overflowing["iat"] = serde_json::json!(end_of_time - 100);
    overflowing["nbf"] = serde_json::json!(end_of_time - 100);
    overflowing["exp"] = serde_json::json!(end_of_time);
    let mut unrepresentable = claims_json();
    unrepresentable["exp"] = serde_json::json!(i64::MAX);
    let plain_jwt = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": "k1"});
    let critical =
        serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k1", "crit": ["b64"]});
    for (what, token) in [
        (
            "lifetime over 15 min",
            sign_raw(&k1, &eddsa_header("k1"), &long_lived),
        ),
        (
            "empty subject",
            sign_raw(&k1, &eddsa_header("k1"), &anonymous),
        ),
        ("no jti", sign_raw(&k1, &eddsa_header("k1"), &no_jti)),
        (
            "times at the end of time",
            sign_raw(&k1, &eddsa_header("k1"), &overflowing),
        ),
        (
            "exp not an instant",
            sign_raw(&k1, &eddsa_header("k1"), &unrepresentable),
        ),
        ("typ JWT", sign_raw(&k1, &plain_jwt, &claims_json())),
        ("crit", sign_raw(&k1, &critical, &claims_json())),
        ("not a jws", "not-a-token".to_owned()),
        ("four parts", format!("{}.x", token(&k1, t0()))),
    ] {
        assert_eq!(
            verifier.verify(&token, t0()).err(),
            Some(TokenError::Malformed),
            "{what}"
        );
    }
}

#[test]
fn a_token_issued_before_its_key_became_valid_is_refused() {
    // Forged with the key but backdated before the key existed: the key does not vouch for it.
    let k1 = SigningKey::generate("k1", t0()).expect("key");
    let mut backdated = claims_json();
    backdated["iat"] = serde_json::json!(t0().timestamp() - 1);
    assert_eq!(
        verifier(&[&k1])
            .verify(&sign_raw(&k1, &eddsa_header("k1"), &backdated), t0())
            .err(),
        Some(TokenError::UnknownKey)
    );
}

#[test]
fn after_rotation_tokens_of_both_keys_verify() {
    let old = key("k1");
    let new = key("k2");
    let verifier = verifier(&[&old]);
    let old_token = token(&old, t0());
    assert!(verifier.verify(&old_token, t0()).is_ok());
    let retiring = old
        .verifying()
        .with_expires_at(Some(t0() + TimeDelta::minutes(15)))
        .expect("window");
    verifier.replace_keys(KeySet::new([retiring, new.verifying()]).expect("set"));
    let new_token = token(&new, t0() + TimeDelta::minutes(1));
    let later = t0() + TimeDelta::minutes(2);
    assert_eq!(
        verifier.verify(&old_token, later).map(|c| c.user_id).ok(),
        Some("user-1".into())
    );
    assert!(verifier.verify(&new_token, later).is_ok());
    // Once the old key's grace is over, its tokens stop even before they expire.
    let old_late = token(&old, t0() + TimeDelta::minutes(10));
    assert_eq!(
        verifier
            .verify(&old_late, t0() + TimeDelta::minutes(15))
            .err(),
        Some(TokenError::UnknownKey)
    );
}

#[test]
fn after_replacing_the_set_without_the_old_key_its_tokens_fail_even_if_cached() {
    let old = key("k1");
    let new = key("k2");
    let verifier = verifier(&[&old]);
    let old_token = token(&old, t0());
    assert!(verifier.verify(&old_token, t0()).is_ok());
    assert!(verifier.verify(&old_token, t0()).is_ok());
    assert_eq!(verifier.cached_tokens(), 1);
    verifier.replace_keys(KeySet::new([new.verifying()]).expect("set"));
    assert_eq!(verifier.cached_tokens(), 0);
    assert_eq!(
        verifier.verify(&old_token, t0()).err(),
        Some(TokenError::UnknownKey)
    );
    assert!(verifier.verify(&token(&new, t0()), t0()).is_ok());
}

#[test]
fn concurrent_verifications_share_the_cache() {
    let k1 = key("k1");
    let verifier = Arc::new(verifier(&[&k1]));
    let tokens: Vec<String> = (0..8).map(|_| token(&k1, Utc::now())).collect();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..200 {
                    for token in &tokens {
                        assert!(verifier.verify(token, Utc::now()).is_ok());
                    }
                }
            });
        }
    });
    assert_eq!(verifier.cached_tokens(), 8);
}

// ---- The layer ----

const PROTECTED: &str = "/repit.lesson.v1.LessonService/GetLesson";
const PUBLIC: &str = "/repit.user.v1.UserService/LoginWithPassword";

/// What the inner service saw: the caller's user id, the refused token's code, and the ambient
/// actor, or "-" for each absent one.
async fn inner(request: http::Request<()>) -> Result<http::Response<String>, Infallible> {
    let caller = request
        .extensions()
        .get::<Caller>()
        .map_or("-".to_owned(), |c| c.user_id.clone());
    let refused = request
        .extensions()
        .get::<TokenError>()
        .map_or("-", |e| e.code());
    let actor = RequestContext::current()
        .map(|c| c.actor_user_id)
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "-".into());
    Ok(http::Response::new(format!("{caller} {refused} {actor}")))
}

fn layer() -> AuthLayer {
    let k1 = key("k1");
    AuthLayer::new(Arc::new(verifier(&[&k1])))
        .public([PUBLIC, "/repit.user.v1.UserService/RefreshToken"])
}

fn request(path: &str, authorization: Option<&str>) -> http::Request<()> {
    let mut builder = http::Request::builder().uri(format!("http://localhost{path}"));
    if let Some(value) = authorization {
        builder = builder.header("authorization", value);
    }
    builder.body(()).expect("request")
}

async fn call(layer: &AuthLayer, request: http::Request<()>) -> http::Response<String> {
    let service = RequestContextLayer.layer(layer.layer(tower::service_fn(inner)));
    service.oneshot(request).await.expect("infallible")
}

fn assert_unauthenticated(response: &http::Response<String>, cause: &str) {
    assert_eq!(
        response.status(),
        http::StatusCode::OK,
        "gRPC errors ride on 200"
    );
    assert!(
        response.body().is_empty(),
        "the inner service was not called"
    );
    let status = tonic::Status::from_header_map(response.headers()).expect("grpc status");
    assert_eq!(status.code(), Code::Unauthenticated);
    let info = status.get_details_error_info().expect("error info");
    assert_eq!(info.reason, "TOKEN_INVALID");
    assert_eq!(info.domain, "repit.app");
    assert_eq!(info.metadata.get("cause").map(String::as_str), Some(cause));
}

/// The layer's verifier has its own key, so tokens here are made with a key it knows.
fn layer_with_key() -> (AuthLayer, SigningKey) {
    let k1 = key("k1");
    let layer = AuthLayer::new(Arc::new(verifier(&[&k1]))).public([PUBLIC]);
    (layer, k1)
}

#[tokio::test]
async fn a_public_method_passes_without_a_token() {
    let response = call(&layer(), request(PUBLIC, None)).await;
    assert_eq!(response.body(), "- - -");
    let health = call(&layer(), request("/grpc.health.v1.Health/Check", None)).await;
    assert_eq!(health.body(), "- - -");
}

#[tokio::test]
async fn a_protected_method_without_a_token_is_unauthenticated() {
    let response = call(&layer(), request(PROTECTED, None)).await;
    assert_unauthenticated(&response, "missing");
    let status = tonic::Status::from_header_map(response.headers()).expect("grpc status");
    assert_eq!(status.message(), "no access token");
}

#[tokio::test]
async fn a_protected_method_with_a_bad_token_is_unauthenticated() {
    let (layer, k1) = layer_with_key();
    let stranger = key("k9");
    let unknown = format!("Bearer {}", token(&stranger, Utc::now()));
    assert_unauthenticated(
        &call(&layer, request(PROTECTED, Some(&unknown))).await,
        "unknown_key",
    );
    let expired = format!("Bearer {}", token(&k1, Utc::now() - TimeDelta::minutes(20)));
    assert_unauthenticated(
        &call(&layer, request(PROTECTED, Some(&expired))).await,
        "expired",
    );
    assert_unauthenticated(
        &call(&layer, request(PROTECTED, Some("Bearer garbage"))).await,
        "malformed",
    );
    assert_unauthenticated(
        &call(&layer, request(PROTECTED, Some("Basic dXNlcjpwdw=="))).await,
        "missing",
    );
}

#[tokio::test]
async fn with_a_good_token_the_inner_service_sees_the_caller_and_the_actor() {
    let (layer, k1) = layer_with_key();
    let bearer = format!("bearer {}", token(&k1, Utc::now()));
    let response = call(&layer, request(PROTECTED, Some(&bearer))).await;
    assert_eq!(response.body(), "user-1 - user-1");
    // A public method with a good token still learns who calls (sign-up with current_user).
    let response = call(&layer, request(PUBLIC, Some(&bearer))).await;
    assert_eq!(response.body(), "user-1 - user-1");
}

#[tokio::test]
async fn a_public_method_with_a_bad_token_passes_and_remembers_why_it_was_refused() {
    let (layer, k1) = layer_with_key();
    let expired = format!("Bearer {}", token(&k1, Utc::now() - TimeDelta::minutes(20)));
    let response = call(&layer, request(PUBLIC, Some(&expired))).await;
    assert_eq!(response.body(), "- expired -");
}
