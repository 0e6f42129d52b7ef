//! Vertex AI credentials: a service account's key signs a JWT (RS256, by aws-lc-rs) that its
//! `token_uri` exchanges for an OAuth access token; the token is cached until five minutes before
//! it expires and refreshed by one caller at a time. Invariants: the private key and the tokens
//! never leave this module in an error, a log line or `Debug`; a key that cannot sign refuses to
//! start, not on the first call.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;

/// The scope Vertex AI calls need.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// A token is replaced this long before Google says it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

#[derive(Deserialize)]
struct ServiceAccount {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
    #[serde(default)]
    project_id: Option<String>,
}

/// One service account's signer and its cached access token.
pub struct VertexAuth {
    client_email: String,
    key_id: Option<String>,
    token_uri: String,
    key: RsaKeyPair,
    cached: ArcSwapOption<(String, Instant)>,
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for VertexAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VertexAuth")
            .field("client_email", &self.client_email)
            .finish_non_exhaustive()
    }
}

/// Why no token could be had (the message names no secret).
#[derive(Debug)]
pub struct TokenError {
    pub message: String,
    /// The token endpoint refused the credentials (a configuration error, not a blip).
    pub refused: bool,
}

impl VertexAuth {
    /// The signer of a service-account key file's JSON, and the file's `project_id`.
    pub fn from_json(json: &str) -> anyhow::Result<(VertexAuth, Option<String>)> {
        let sa: ServiceAccount = serde_json::from_str(json).map_err(|e| {
            anyhow::anyhow!(
                "not a service-account key (JSON with client_email and private_key): {}",
                // serde's message names the field or position, never the value.
                e.to_string().split(" at line").next().unwrap_or("")
            )
        })?;
        if sa.kind.as_deref().is_some_and(|k| k != "service_account") {
            anyhow::bail!(
                "credentials of type '{}' are not supported: use a service-account key",
                sa.kind.unwrap_or_default()
            );
        }
        let der = PrivatePkcs8KeyDer::from_pem_slice(sa.private_key.as_bytes())
            .map_err(|_| anyhow::anyhow!("private_key is not a PKCS#8 PEM key"))?;
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|_| anyhow::anyhow!("private_key is not an RSA key that can sign"))?;
        let token_uri = sa
            .token_uri
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "https://oauth2.googleapis.com/token".into());
        if reqwest::Url::parse(&token_uri).map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
        {
            anyhow::bail!("token_uri must be an http(s) URL");
        }
        let auth = VertexAuth {
            client_email: sa.client_email,
            key_id: sa.private_key_id,
            token_uri,
            key,
            cached: ArcSwapOption::empty(),
            refreshing: tokio::sync::Mutex::new(()),
        };
        // Sign once now: a key that cannot sign refuses to start.
        auth.assertion(unix_now())?;
        Ok((auth, sa.project_id))
    }

    /// The signed JWT the token endpoint exchanges (valid one hour from `now`).
    fn assertion(&self, now: u64) -> anyhow::Result<String> {
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = kid.clone().into();
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| anyhow::anyhow!("the service-account key could not sign"))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// A valid access token: the cached one, else a new one from the token endpoint (one
    /// refresh at a time; callers that waited use its result).
    pub async fn token(
        &self,
        client: &reqwest::Client,
    ) -> Result<Arc<(String, Instant)>, TokenError> {
        if let Some(t) = self.fresh() {
            return Ok(t);
        }
        let _one = self.refreshing.lock().await;
        if let Some(t) = self.fresh() {
            return Ok(t);
        }
        let failed = |message: String, refused: bool| TokenError { message, refused };
        let assertion = self
            .assertion(unix_now())
            .map_err(|e| failed(e.to_string(), true))?;
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
            .append_pair("assertion", &assertion)
            .finish();
        let resp = client
            .post(&self.token_uri)
            .timeout(Duration::from_secs(30))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send()
            .await
            .map_err(|_| failed("the token endpoint could not be reached".into(), false))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(failed(
                format!("the token endpoint answered HTTP {}", status.as_u16()),
                status.is_client_error(),
            ));
        }
        #[derive(Deserialize)]
        struct Granted {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let g: Granted = resp
            .json()
            .await
            .map_err(|_| failed("the token endpoint answered no access_token".into(), false))?;
        let lifetime = Duration::from_secs(g.expires_in.unwrap_or(3600));
        let until = Instant::now() + lifetime.saturating_sub(REFRESH_MARGIN);
        let t = Arc::new((g.access_token, until));
        self.cached.store(Some(Arc::clone(&t)));
        tracing::info!(account = %self.client_email, "Vertex AI access token refreshed");
        Ok(t)
    }

    fn fresh(&self) -> Option<Arc<(String, Instant)>> {
        self.cached.load_full().filter(|t| Instant::now() < t.1)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The base URL of a Vertex project, location and publisher (`google` for Gemini, `anthropic`
/// for Claude; below it: `/models/{m}:…`):
/// `{root}/v1/projects/{project}/locations/{location}/publishers/{publisher}`, where the root is
/// the location's regional host (`global`: the global host) unless `api_base` gives one.
pub fn base_url(api_base: Option<&str>, project: &str, location: &str, publisher: &str) -> String {
    let root = match api_base {
        Some(b) => b.trim_end_matches('/').to_string(),
        None if location == "global" => "https://aiplatform.googleapis.com".into(),
        None => format!("https://{location}-aiplatform.googleapis.com"),
    };
    format!(
        "{root}/v1/projects/{}/locations/{}/publishers/{publisher}",
        purser_core::provider::encode_component(project),
        purser_core::provider::encode_component(location)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_follow_the_location() {
        assert_eq!(
            base_url(None, "p", "us-central1", "google"),
            "https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/us-central1/publishers/google"
        );
        assert_eq!(
            base_url(None, "p", "global", "google"),
            "https://aiplatform.googleapis.com/v1/projects/p/locations/global/publishers/google"
        );
        assert_eq!(
            base_url(Some("http://127.0.0.1:9/ok/"), "my proj", "eu", "anthropic"),
            "http://127.0.0.1:9/ok/v1/projects/my%20proj/locations/eu/publishers/anthropic"
        );
    }

    #[test]
    fn bad_credentials_are_refused_without_echoing_them() {
        for (json, says) in [
            ("not json", "not a service-account key"),
            (
                r#"{"type": "authorized_user", "client_email": "a", "private_key": "x"}"#,
                "authorized_user",
            ),
            (
                r#"{"client_email": "a", "private_key": "SECRET-NOT-PEM"}"#,
                "PKCS#8",
            ),
        ] {
            let e = VertexAuth::from_json(json).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
            assert!(!e.contains("SECRET"), "{e}");
        }
    }
}
