//! Certificate lifetimes set by governance (CCF's `set_node_certificate_validity`,
//! `set_all_nodes_certificate_validity`, `set_service_certificate_validity`): in the transaction that accepts the
//! proposal, the primary endorses the node's key again (or makes the service certificate again, same key and
//! subject) for the requested period and records it; each node presents its renewed certificate from the next
//! TLS handshake on (`crate::channels::NodeCert`), without a restart. The period becomes the policy for nodes
//! that join later.
//!
//! Everything here works on a transaction and is tested without a node.

use serde_json::Value;
use synod_core::cert::{self, Identity, Validity};
use synod_core::maps;
use synod_core::tables::{NodeInfo, NodeStatus, ServiceInfo};
use synod_kv::Tx;

use crate::governance::get_json;

/// The longest validity governance may set, as CCF's default `maximum_node_certificate_validity_days`.
pub const VALIDITY_DAYS_MAX: u32 = 365;

/// Why a renewal cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum RenewalError {
    /// The node is not in the nodes table, or not trusted.
    #[error("node {0} is not a trusted node")]
    NotTrusted(String),
    /// Arguments the constitution let through but that do not make a validity.
    #[error("{0}")]
    BadArgument(String),
    /// The stored certificate cannot be read, or a new one made.
    #[error("certificate: {0}")]
    Certificate(#[from] cert::CertError),
    /// The node is not the one holding the service key.
    #[error("this node cannot sign certificates")]
    NoServiceKey,
}

/// CCF's `valid_from`: ASN.1 UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ`, to seconds since the
/// epoch.
pub fn parse_valid_from(s: &str) -> Result<i64, RenewalError> {
    let bad = || {
        RenewalError::BadArgument(format!(
            "valid_from {s:?} is not YYMMDDHHMMSSZ or YYYYMMDDHHMMSSZ"
        ))
    };
    let digits = s
        .strip_suffix('Z')
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(bad)?;
    let (year, rest) = match digits.len() {
        12 => {
            let yy: i32 = digits[..2].parse().map_err(|_| bad())?;
            // RFC 5280: UTCTime years 50–99 are 19xx.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        14 => (digits[..4].parse().map_err(|_| bad())?, &digits[4..]),
        _ => return Err(bad()),
    };
    let field = |i: usize| rest[i..i + 2].parse::<u8>().map_err(|_| bad());
    let month = time::Month::try_from(field(0)?).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(year, month, field(2)?).map_err(|_| bad())?;
    let at = time::Time::from_hms(field(4)?, field(6)?, field(8)?).map_err(|_| bad())?;
    Ok(time::PrimitiveDateTime::new(date, at)
        .assume_utc()
        .unix_timestamp())
}

fn validity_of_args(args: &Value, now: u64) -> Result<Validity, RenewalError> {
    let days = args["validity_period_days"]
        .as_u64()
        .filter(|d| (1..=u64::from(VALIDITY_DAYS_MAX)).contains(d))
        .ok_or_else(|| {
            RenewalError::BadArgument(format!(
                "validity_period_days must be an integer between 1 and {VALIDITY_DAYS_MAX}"
            ))
        })?;
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let not_before = match args["valid_from"].as_str() {
        Some(s) => parse_valid_from(s)?,
        None => now,
    };
    let validity = Validity {
        not_before,
        days: days as u32,
    };
    // A certificate not valid now would cut the node off from its peers and clients at once.
    if not_before > now || validity.not_after() <= now {
        return Err(RenewalError::BadArgument(format!(
            "valid_from {} with {days} days would not be valid now",
            args["valid_from"]
        )));
    }
    Ok(validity)
}

/// The service identity as the state records it now: its certificate from the service info (it may have been
/// renewed), its key from this node.
fn service_identity(tx: &mut Tx, service_key_pem: &str) -> Result<Identity, RenewalError> {
    let cert_pem = get_json::<ServiceInfo>(tx, maps::SERVICE_INFO, "")
        .map(|info| info.cert)
        .filter(|cert| !cert.is_empty())
        .ok_or_else(|| RenewalError::BadArgument("no service certificate".into()))?;
    Ok(Identity {
        cert_pem,
        key_pem: service_key_pem.to_string(),
    })
}

/// Renews node `node_id`'s certificate for `validity`.
fn renew_node(
    tx: &mut Tx,
    node_id: &str,
    service: &Identity,
    validity: Validity,
) -> Result<(), RenewalError> {
    let mut info = get_json::<NodeInfo>(tx, maps::NODES_INFO, node_id)
        .filter(|i| i.status == NodeStatus::Trusted)
        .ok_or_else(|| RenewalError::NotTrusted(node_id.to_string()))?;
    let current = cert::pem_to_der(&info.cert)?;
    info.cert = cert::renew_endorsed(&current, service, validity)?;
    tx.put(
        maps::NODES_INFO,
        node_id.as_bytes(),
        info.to_value().to_string().as_bytes(),
    );
    Ok(())
}

/// Applies the certificate actions of an accepted `proposal` (JSON) in `tx`, signing with the service key
/// (`service_key_pem`) at time `now` (seconds). Returns whether there were any.
pub fn apply(
    tx: &mut Tx,
    proposal: &str,
    service_key_pem: Option<&str>,
    now: u64,
) -> Result<bool, RenewalError> {
    let actions: Vec<Value> = serde_json::from_str::<Value>(proposal)
        .ok()
        .and_then(|p| p["actions"].as_array().cloned())
        .unwrap_or_default();
    let mut any = false;
    for action in &actions {
        let name = action["name"].as_str().unwrap_or_default();
        if !matches!(
            name,
            "set_node_certificate_validity"
                | "set_all_nodes_certificate_validity"
                | "set_service_certificate_validity"
        ) {
            continue;
        }
        any = true;
        let key = service_key_pem.ok_or(RenewalError::NoServiceKey)?;
        let validity = validity_of_args(&action["args"], now)?;
        let service = service_identity(tx, key)?;
        match name {
            "set_node_certificate_validity" => {
                let node_id = action["args"]["node_id"].as_str().unwrap_or_default();
                renew_node(tx, node_id, &service, validity)?;
            }
            "set_all_nodes_certificate_validity" => {
                let trusted: Vec<String> = tx
                    .range(maps::NODES_INFO, b"", None, usize::MAX)
                    .into_iter()
                    .filter(|(_, v)| NodeInfo::from_slice(v).is_some_and(|i| i.status == NodeStatus::Trusted))
                    .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
                    .collect();
                for node_id in trusted {
                    renew_node(tx, &node_id, &service, validity)?;
                }
            }
            _ => {
                let mut info = get_json::<Value>(tx, maps::SERVICE_INFO, "").unwrap_or_default();
                info["cert"] = Value::String(cert::renew_self_signed(&service, validity)?);
                tx.put(maps::SERVICE_INFO, b"", info.to_string().as_bytes());
            }
        }
    }
    Ok(any)
}

/// A certificate is renewed automatically once less than this fraction of its validity is left (CCF leaves this
/// to operators; expiry is the failure its users report most).
pub const RENEW_WHEN_LEFT: (i64, i64) = (1, 3);

/// Whether a certificate valid `(from, until)` is due for renewal at `now`: less than a third of it left.
fn due(validity: (i64, i64), now: i64) -> bool {
    let (from, until) = validity;
    let (num, den) = RENEW_WHEN_LEFT;
    until - now < (until - from) * num / den
}

/// Renews in `tx` every certificate that governance gave a lifetime (`node_certificate_validity_days`,
/// `service_certificate_validity_days` in the service info) and that is due ([`RENEW_WHEN_LEFT`]), for the same
/// period from `now`. Returns how many it renewed: the primary runs it from time to time, so certificates never
/// lapse while the service runs.
pub fn renew_expiring(tx: &mut Tx, service_key_pem: &str, now: i64) -> Result<usize, RenewalError> {
    let info = get_json::<Value>(tx, maps::SERVICE_INFO, "").unwrap_or_default();
    let period = |field: &str| {
        info[field]
            .as_u64()
            .and_then(|d| u32::try_from(d).ok())
            .map(|days| Validity {
                not_before: now,
                days: days.clamp(1, VALIDITY_DAYS_MAX),
            })
    };
    let validity_of_pem = |pem: &str| cert::pem_to_der(pem).and_then(|der| cert::validity_of(&der));
    let mut renewed = 0;
    if let Some(validity) = period("service_certificate_validity_days") {
        let service = service_identity(tx, service_key_pem)?;
        if due(validity_of_pem(&service.cert_pem)?, now) {
            let mut info = info.clone();
            info["cert"] = Value::String(cert::renew_self_signed(&service, validity)?);
            tx.put(maps::SERVICE_INFO, b"", info.to_string().as_bytes());
            renewed += 1;
        }
    }
    if let Some(validity) = period("node_certificate_validity_days") {
        let service = service_identity(tx, service_key_pem)?;
        let nodes: Vec<(String, NodeInfo)> = tx
            .range(maps::NODES_INFO, b"", None, usize::MAX)
            .into_iter()
            .filter_map(|(k, v)| Some((String::from_utf8(k.to_vec()).ok()?, NodeInfo::from_slice(&v)?)))
            .collect();
        for (node_id, node) in nodes {
            if node.status != NodeStatus::Trusted || node.cert.is_empty() {
                continue;
            }
            if due(validity_of_pem(&node.cert)?, now) {
                renew_node(tx, &node_id, &service, validity)?;
                renewed += 1;
            }
        }
    }
    Ok(renewed)
}

/// The validity for a node joining now, under the policy `set_all_nodes_certificate_validity` recorded (none:
/// certificates without a practical end, as before any policy).
pub fn joiner_validity(service_info: &Value, now: u64) -> Option<Validity> {
    let days = service_info["node_certificate_validity_days"].as_u64()?;
    Some(Validity {
        not_before: i64::try_from(now).ok()?,
        days: u32::try_from(days).ok()?.clamp(1, VALIDITY_DAYS_MAX),
    })
}

#[cfg(test)]
mod tests {
    use synod_kv::State;

    use super::*;

    #[test]
    fn the_primary_renews_what_governance_gave_a_lifetime_once_a_third_is_left() {
        let service = cert::generate_self_signed("Synod service", true).unwrap();
        let start = 1_900_000_000i64;
        let node = cert::renew_endorsed(
            &cert::pem_to_der(
                &cert::generate_endorsed("n1", &[], &[], &service)
                    .unwrap()
                    .cert_pem,
            )
            .unwrap(),
            &service,
            Validity {
                not_before: start,
                days: 30,
            },
        )
        .unwrap();
        let mut tx = Tx::new(State::default());
        let put = |tx: &mut Tx, map: &str, key: &[u8], v: Value| tx.put(map, key, v.to_string().as_bytes());
        put(
            &mut tx,
            maps::SERVICE_INFO,
            b"",
            serde_json::json!({"cert": service.cert_pem}),
        );
        put(
            &mut tx,
            maps::NODES_INFO,
            b"n1",
            serde_json::json!({"cert": node, "status": "Trusted"}),
        );
        // No lifetime set by governance: nothing is renewed, however old.
        assert_eq!(
            renew_expiring(&mut tx, &service.key_pem, start + 29 * DAY).unwrap(),
            0
        );
        put(
            &mut tx,
            maps::SERVICE_INFO,
            b"",
            serde_json::json!({"cert": service.cert_pem, "node_certificate_validity_days": 30}),
        );
        // Two thirds left: not yet; less than a third: renewed for 30 days from now.
        assert_eq!(
            renew_expiring(&mut tx, &service.key_pem, start + 10 * DAY).unwrap(),
            0
        );
        let now = start + 21 * DAY;
        assert_eq!(renew_expiring(&mut tx, &service.key_pem, now).unwrap(), 1);
        let pem = get_json::<Value>(&mut tx, maps::NODES_INFO, "n1").unwrap()["cert"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            cert::validity_of(&cert::pem_to_der(&pem).unwrap()).unwrap(),
            (now, now + 30 * DAY - 1)
        );
        assert_eq!(
            renew_expiring(&mut tx, &service.key_pem, now + DAY).unwrap(),
            0,
            "fresh again"
        );
    }

    const DAY: i64 = 86_400;

    #[test]
    fn valid_from_takes_both_asn1_forms_and_nothing_else() {
        assert_eq!(parse_valid_from("211019154318Z").unwrap(), 1_634_658_198);
        assert_eq!(parse_valid_from("20211019154318Z").unwrap(), 1_634_658_198);
        assert_eq!(parse_valid_from("991231235959Z").unwrap(), 946_684_799);
        for bad in [
            "",
            "2110191543Z",
            "211319154318Z",
            "211019154318",
            "21101915431xZ",
            "211032154318Z",
        ] {
            assert!(parse_valid_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn governance_renews_a_node_all_nodes_or_the_service_for_the_period_asked() {
        let service = cert::generate_self_signed("Synod service", true).unwrap();
        let n1 = cert::generate_endorsed("n1", &[], &[], &service).unwrap();
        let mut tx = Tx::new(State::default());
        tx.put(
            maps::SERVICE_INFO,
            b"",
            serde_json::json!({"cert": service.cert_pem, "status": "Open"})
                .to_string()
                .as_bytes(),
        );
        tx.put(
            maps::NODES_INFO,
            b"n1",
            serde_json::json!({"cert": n1.cert_pem, "status": "Trusted"})
                .to_string()
                .as_bytes(),
        );
        tx.put(maps::NODES_INFO, b"n2", br#"{"status": "Retired"}"#);
        let now = 1_900_000_000;
        let proposal = |name: &str, args: Value| {
            serde_json::json!({"actions": [{"name": name, "args": args}]}).to_string()
        };
        let renewed = |tx: &mut Tx, map: &str, key: &str| {
            let pem = get_json::<Value>(tx, map, key).unwrap()["cert"]
                .as_str()
                .unwrap()
                .to_string();
            cert::validity_of(&cert::pem_to_der(&pem).unwrap()).unwrap()
        };
        assert!(apply(
            &mut tx,
            &proposal(
                "set_node_certificate_validity",
                serde_json::json!({"node_id": "n1", "validity_period_days": 7})
            ),
            Some(&service.key_pem),
            now
        )
        .unwrap());
        assert_eq!(
            renewed(&mut tx, maps::NODES_INFO, "n1"),
            (now as i64, now as i64 + 7 * 86_400 - 1)
        );
        assert!(matches!(
            apply(
                &mut tx,
                &proposal(
                    "set_node_certificate_validity",
                    serde_json::json!({"node_id": "n2", "validity_period_days": 7})
                ),
                Some(&service.key_pem),
                now
            ),
            Err(RenewalError::NotTrusted(_))
        ));
        // 2030-01-01, before `now` (2030-03-17).
        apply(
            &mut tx,
            &proposal(
                "set_all_nodes_certificate_validity",
                serde_json::json!({"validity_period_days": 300, "valid_from": "20300101000000Z"}),
            ),
            Some(&service.key_pem),
            now,
        )
        .unwrap();
        assert_eq!(renewed(&mut tx, maps::NODES_INFO, "n1").0, 1_893_456_000);
        // Not valid now (in the future, or over already): refused.
        for (from, days) in [("20310101000000Z", 30), ("20200101000000Z", 30)] {
            let args = serde_json::json!({"validity_period_days": days, "valid_from": from});
            assert!(apply(
                &mut tx,
                &proposal("set_all_nodes_certificate_validity", args),
                Some(&service.key_pem),
                now
            )
            .is_err());
        }
        apply(
            &mut tx,
            &proposal(
                "set_service_certificate_validity",
                serde_json::json!({"validity_period_days": 365}),
            ),
            Some(&service.key_pem),
            now,
        )
        .unwrap();
        assert_eq!(
            renewed(&mut tx, maps::SERVICE_INFO, "").1,
            now as i64 + 365 * 86_400 - 1
        );
        // The renewed node certificate is still endorsed by the renewed service certificate (same key, subject).
        let node = cert::pem_to_der(
            get_json::<Value>(&mut tx, maps::NODES_INFO, "n1").unwrap()["cert"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let svc = cert::pem_to_der(
            get_json::<Value>(&mut tx, maps::SERVICE_INFO, "").unwrap()["cert"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        cert::verify_endorsement(&node, &svc).unwrap();
        // Out-of-range periods are refused; other actions are not this module's.
        assert!(apply(
            &mut tx,
            &proposal(
                "set_service_certificate_validity",
                serde_json::json!({"validity_period_days": 366})
            ),
            Some(&service.key_pem),
            now
        )
        .is_err());
        assert!(!apply(&mut tx, &proposal("set_user", serde_json::json!({})), None, now).unwrap());
    }
}
