//! ES256 JSON Web Tokens (JWS compact form) and the signing key behind them, as
//! kube-apiserver signs ServiceAccount tokens with an ECDSA P-256 key: header
//! `{"alg":"ES256","kid":…}`, the claims as a JSON object, the signature as the raw 64-byte
//! `r || s` (RFC 7518 §3.4, not DER). The key id is kube's: base64url of the SHA-256 of the
//! public key's DER (SubjectPublicKeyInfo), so the `kid` in tokens matches the one in the
//! JWKS document verifiers fetch. Times, issuers and audiences are the caller's business
//! ([`crate::tokens`]); this module only signs and checks signatures.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const ALGORITHM: &str = "ES256";

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token is signed with {0:?}; only ES256 is accepted")]
    Algorithm(String),
    #[error("the token's signature does not verify against the service account signing key")]
    Signature,
    #[error("service account signing key: {0}")]
    Key(String),
}

pub type Result<T, E = JwtError> = std::result::Result<T, E>;

/// The cluster's service account signing key with its key id.
pub struct Key {
    signing: SigningKey,
    kid: String,
}

impl std::fmt::Debug for Key {
    // Never print the private half.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key {{ kid: {} }}", self.kid)
    }
}

/// kube's `keyIDFromPublicKey`: base64url(SHA-256(DER of the SubjectPublicKeyInfo)).
pub fn key_id(public: &VerifyingKey) -> Result<String> {
    let der = public.to_public_key_der().map_err(|e| JwtError::Key(format!("encode the public key: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(der.as_bytes())))
}

impl Key {
    pub fn generate() -> Result<Key> {
        Key::from_signing(SigningKey::random(&mut rand_core::OsRng))
    }

    fn from_signing(signing: SigningKey) -> Result<Key> {
        let kid = key_id(signing.verifying_key())?;
        Ok(Key { signing, kid })
    }

    /// From a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), the form the key is stored in.
    pub fn from_pem(pem: &str) -> Result<Key> {
        let signing = SigningKey::from_pkcs8_pem(pem)
            .map_err(|e| JwtError::Key(format!("not a PKCS#8 P-256 private key: {e}")))?;
        Key::from_signing(signing)
    }

    pub fn to_pem(&self) -> Result<String> {
        let pem = self
            .signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| JwtError::Key(format!("encode the private key: {e}")))?;
        Ok(pem.as_str().to_string())
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (RFC 7517/7518), as kube-apiserver lists it at `/openid/v1/jwks`.
    pub fn jwk(&self) -> Value {
        let point = self.signing.verifying_key().to_encoded_point(false);
        let coordinate = |c: Option<&p256::FieldBytes>| c.map(|c| URL_SAFE_NO_PAD.encode(c)).unwrap_or_default();
        json!({
            "use": "sig",
            "kty": "EC",
            "kid": self.kid,
            "crv": "P-256",
            "alg": ALGORITHM,
            "x": coordinate(point.x()),
            "y": coordinate(point.y()),
        })
    }

    /// Signs `claims` (a JSON object) into a compact JWS.
    pub fn sign(&self, claims: &Value) -> Result<String> {
        let header = json!({"alg": ALGORITHM, "kid": self.kid});
        let encode = |v: &Value| {
            serde_json::to_vec(v)
                .map(|bytes| URL_SAFE_NO_PAD.encode(bytes))
                .map_err(|e| JwtError::Malformed(format!("encode: {e}")))
        };
        let signed = format!("{}.{}", encode(&header)?, encode(claims)?);
        let signature: Signature = self.signing.sign(signed.as_bytes());
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes())))
    }

    /// The claims of `token` if this key signed it.
    pub fn verify(&self, token: &str) -> Result<Value> {
        let parts = Parts::split(token)?;
        let algorithm = parts.header.get("alg").and_then(Value::as_str).unwrap_or("");
        // The algorithm comes from the attacker's side of the wire: only ours is accepted
        // ("none" and HMAC confusion are refused here).
        if algorithm != ALGORITHM {
            return Err(JwtError::Algorithm(algorithm.to_string()));
        }
        let signature = URL_SAFE_NO_PAD
            .decode(parts.signature)
            .map_err(|e| JwtError::Malformed(format!("signature is not base64url: {e}")))?;
        let signature = Signature::from_slice(&signature).map_err(|_| JwtError::Signature)?;
        self.signing.verifying_key().verify(parts.signed.as_bytes(), &signature).map_err(|_| JwtError::Signature)?;
        Ok(parts.claims)
    }
}

/// A token cut into its three parts, header and claims decoded, nothing verified.
struct Parts<'a> {
    header: Value,
    claims: Value,
    /// `header.claims` as sent: what the signature covers.
    signed: &'a str,
    signature: &'a str,
}

impl<'a> Parts<'a> {
    fn split(token: &'a str) -> Result<Parts<'a>> {
        let token = token.trim();
        let (signed, signature) =
            token.rsplit_once('.').ok_or_else(|| JwtError::Malformed("not three dot-separated parts".into()))?;
        let (header, claims) =
            signed.split_once('.').ok_or_else(|| JwtError::Malformed("not three dot-separated parts".into()))?;
        if claims.contains('.') {
            return Err(JwtError::Malformed("more than three dot-separated parts".into()));
        }
        let decode = |part: &str, what: &str| -> Result<Value> {
            let bytes = URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|e| JwtError::Malformed(format!("{what} is not base64url: {e}")))?;
            let value: Value =
                serde_json::from_slice(&bytes).map_err(|e| JwtError::Malformed(format!("{what} is not JSON: {e}")))?;
            if !value.is_object() {
                return Err(JwtError::Malformed(format!("{what} is not a JSON object")));
            }
            Ok(value)
        };
        Ok(Parts { header: decode(header, "header")?, claims: decode(claims, "claims")?, signed, signature })
    }
}

/// The claims of `token` without checking its signature: to decide which validator applies
/// (by `iss`) before verifying, as kube's authenticator does.
pub fn unverified_claims(token: &str) -> Result<Value> {
    Parts::split(token).map(|p| p.claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed key (made with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`),
    /// and its kid and coordinates computed apart from this code, with
    /// `openssl pkey -pubout -outform DER | openssl dgst -sha256 -binary | basenc --base64url`
    /// (padding dropped, as Go's RawURLEncoding writes it) and the DER's last 64 bytes.
    const PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgI7ccEWWftV2X1aEl
v330MZi15S7nSA2EmtvyiLoOuAOhRANCAASTud8Pc+217PRPrP+vO6TM+tOKNjuw
a0+9VP0go1eo3Zz+FXy6mZkI1/coNmh2+xScvX9bSfWDKiLBAbJYu27L
-----END PRIVATE KEY-----
";

    #[test]
    fn sign_and_verify_round_trip() {
        let key = Key::generate().unwrap();
        let claims = json!({"sub": "system:serviceaccount:default:bot", "aud": ["x"], "exp": 1});
        let token = key.sign(&claims).unwrap();
        assert_eq!(token.matches('.').count(), 2);
        assert_eq!(key.verify(&token).unwrap(), claims);
        assert_eq!(unverified_claims(&token).unwrap(), claims);
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header, json!({"alg": "ES256", "kid": key.kid()}));
        // The key survives its stored form.
        let again = Key::from_pem(&key.to_pem().unwrap()).unwrap();
        assert_eq!(again.kid(), key.kid());
        assert_eq!(again.verify(&token).unwrap(), claims);
    }

    #[test]
    fn tampering_and_other_keys_are_refused() {
        let key = Key::generate().unwrap();
        let token = key.sign(&json!({"sub": "a"})).unwrap();
        let (signed, signature) = token.rsplit_once('.').unwrap();
        // Claims swapped under the same signature.
        let (header, _) = signed.split_once('.').unwrap();
        let forged = format!("{header}.{}.{signature}", URL_SAFE_NO_PAD.encode(br#"{"sub":"admin"}"#));
        assert!(matches!(key.verify(&forged), Err(JwtError::Signature)));
        // One signature byte flipped.
        let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
        bytes[10] ^= 1;
        let flipped = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&bytes));
        assert!(matches!(key.verify(&flipped), Err(JwtError::Signature)));
        // Another cluster's key.
        assert!(matches!(Key::generate().unwrap().verify(&token), Err(JwtError::Signature)));
        // alg "none" with no signature.
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#), URL_SAFE_NO_PAD.encode(b"{}"));
        assert!(matches!(key.verify(&none), Err(JwtError::Algorithm(a)) if a == "none"));
        for garbage in ["", "a.b", "a.b.c.d", "!!.e30.e30"] {
            assert!(matches!(key.verify(garbage), Err(JwtError::Malformed(_))), "{garbage:?}");
        }
    }

    #[test]
    fn key_id_is_kubes() {
        let key = Key::from_pem(PEM).unwrap();
        assert_eq!(key.kid(), KID);
        let jwk = key.jwk();
        assert_eq!(
            (&jwk["kty"], &jwk["crv"], &jwk["alg"], &jwk["use"]),
            (&json!("EC"), &json!("P-256"), &json!("ES256"), &json!("sig"))
        );
        assert_eq!(jwk["kid"], KID);
        assert_eq!(jwk["x"], "k7nfD3Pttez0T6z_rzukzPrTijY7sGtPvVT9IKNXqN0");
        assert_eq!(jwk["y"], "nP4VfLqZmQjX9yg2aHb7FJy9f1tJ9YMqIsEBsli7bss");
    }

    const KID: &str = "fApjXqBRcc5XnliEjSZMW6vQu20sN_Aie-SDRWzO6wY";
}
