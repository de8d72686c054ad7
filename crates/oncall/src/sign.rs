//! Signed links: a notification carries `…/v1/pages/{id}/ack?sig=…` that
//! works without a login. The signature is HMAC-SHA256 over the page id and
//! the action with a server secret, so a link acknowledges one page only,
//! and an acknowledge link cannot resolve.

use crate::pager::PageId;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], page: PageId, action: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(page.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(action.as_bytes());
    mac
}

/// Hex signature of `action` (`ack` or `resolve`) on `page`.
pub fn sign(secret: &[u8], page: PageId, action: &str) -> String {
    hex::encode(mac(secret, page, action).finalize().into_bytes())
}

/// Constant-time check of a signature from a link.
pub fn verify(secret: &[u8], page: PageId, action: &str, signature: &str) -> bool {
    let Ok(bytes) = hex::decode(signature) else { return false };
    mac(secret, page, action).verify_slice(&bytes).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let mut m = HmacSha256::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_signature_is_bound_to_its_page_action_and_secret() {
        let page = PageId::new_at(1_000_000, 1);
        let other = PageId::new_at(1_000_000, 2);
        let sig = sign(b"secret", page, "ack");
        assert!(verify(b"secret", page, "ack", &sig));
        assert!(!verify(b"secret", page, "resolve", &sig));
        assert!(!verify(b"secret", other, "ack", &sig));
        assert!(!verify(b"other secret", page, "ack", &sig));
        assert!(!verify(b"secret", page, "ack", "zz"));
        assert!(!verify(b"secret", page, "ack", &sig[..10]));
    }
}
