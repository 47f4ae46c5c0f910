//! Attestation: evidence that a node runs approved code, bound to the node's key. A [`Platform`] produces evidence
//! whose report data is the SHA-256 of the node's public key (its node id); the primary verifies the evidence,
//! checks that binding against the key the node presents in TLS, and admits the node only if the measurement is
//! in `public:ccf.gov.nodes.code_ids`.
//!
//! The `virtual` platform runs anywhere: its evidence is a JSON statement of measurement and report data with no
//! hardware signature (as CCF's virtual mode), and the measurement is the SHA-256 of the node binary. It travels
//! the same path real SGX/SEV-SNP evidence travels, so replacing the platform changes no caller.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use synod_core::hash::{sha256, Digest};

/// Evidence as it travels in a join request (CCF's `quote_info` shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteInfo {
    /// `Virtual` (more formats with hardware platforms).
    pub format: String,
    /// Base64 evidence.
    pub quote: String,
    /// Base64 endorsements (certificate chain, collateral); empty for `Virtual`.
    #[serde(default)]
    pub endorsements: String,
    /// SEV-SNP: base64 UVM endorsements (COSE Sign1: a publisher's statement of the launch measurement), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uvm_endorsements: Option<String>,
}

pub use synod_core::attestation::{PlatformKind, Verified};

/// Attestation errors.
#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    /// Evidence that is refused, with the check that failed.
    #[error(transparent)]
    Refused(#[from] synod_core::attestation::AttestationError),
    /// The platform's attestation device is missing or failed (not evidence anyone sent: this node's own).
    #[error("attestation device: {0}")]
    Device(String),
    /// Reading the node binary for its measurement failed.
    #[error("cannot measure the node binary {}: {source}", path.display())]
    Measure {
        /// The binary.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A source of attestation evidence.
pub trait Platform: Send + Sync {
    /// Evidence binding `report_data` (the node id's bytes).
    fn evidence(&self, report_data: &Digest) -> Result<QuoteInfo, AttestationError>;
    /// This node's own measurement (hex).
    fn measurement(&self) -> String;
}

/// The `virtual` platform (see the module docs).
pub struct VirtualPlatform {
    measurement: Digest,
}

impl VirtualPlatform {
    /// Measures the running binary.
    pub fn measure_self() -> Result<VirtualPlatform, AttestationError> {
        let exe = std::env::current_exe().map_err(|source| AttestationError::Measure {
            path: "/proc/self/exe".into(),
            source,
        })?;
        let bytes = std::fs::read(&exe).map_err(|source| AttestationError::Measure {
            path: exe.clone(),
            source,
        })?;
        Ok(VirtualPlatform {
            measurement: sha256(&bytes),
        })
    }

    /// A platform with a given measurement (`--virtual-measurement`, tests).
    pub fn with_measurement(measurement: Digest) -> VirtualPlatform {
        VirtualPlatform { measurement }
    }

    /// The platform a node with `configured` (`--virtual-measurement`) runs on.
    pub fn for_node(configured: Option<Digest>) -> Result<VirtualPlatform, AttestationError> {
        match configured {
            Some(m) => Ok(VirtualPlatform::with_measurement(m)),
            None => VirtualPlatform::measure_self(),
        }
    }
}

impl Platform for VirtualPlatform {
    fn evidence(&self, report_data: &Digest) -> Result<QuoteInfo, AttestationError> {
        let statement = synod_core::attestation::VirtualStatement {
            measurement: hex::encode(self.measurement),
            report_data: hex::encode(report_data),
        };
        let json = serde_json::to_vec(&statement).unwrap_or_default();
        Ok(QuoteInfo {
            format: PlatformKind::Virtual.format().into(),
            quote: base64::engine::general_purpose::STANDARD.encode(json),
            endorsements: String::new(),
            uvm_endorsements: None,
        })
    }

    fn measurement(&self) -> String {
        hex::encode(self.measurement)
    }
}

/// Intel SGX through Gramine's `/dev/attestation` pseudo-files (the way a Rust binary runs in an SGX enclave
/// today): write the 64 bytes of report data to `user_report_data`, read a DCAP quote from `quote`. The collateral
/// (PCK CRL, TCB info, QE identity: what a PCCS or Azure's THIM serves) comes from a file the operator keeps fresh
/// (`--sgx-collateral`), as `dcap-qvl`'s `QuoteCollateralV3` JSON.
pub struct GramineSgxPlatform {
    dir: std::path::PathBuf,
    collateral: Vec<u8>,
    measurement: String,
}

/// Where MRENCLAVE sits in a DCAP quote: after the 48-byte header, 64 bytes into the ISV report body.
const QUOTE_MRENCLAVE: std::ops::Range<usize> = 112..144;

impl GramineSgxPlatform {
    /// Opens Gramine's attestation interface at `dir` (`/dev/attestation` inside an enclave) with the collateral
    /// in `collateral_file`; learns its own MRENCLAVE from a first quote.
    pub fn open(dir: &std::path::Path, collateral_file: &std::path::Path) -> Result<Self, AttestationError> {
        let kind = std::fs::read_to_string(dir.join("attestation_type")).map_err(|e| {
            AttestationError::Device(format!(
                "{}: {e} (not inside a Gramine SGX enclave?)",
                dir.display()
            ))
        })?;
        if kind.trim() != "dcap" {
            return Err(AttestationError::Device(format!(
                "Gramine attestation type is {:?}, not \"dcap\" (sgx.remote_attestation = \"dcap\" in the manifest)",
                kind.trim()
            )));
        }
        let collateral = std::fs::read(collateral_file).map_err(|e| {
            AttestationError::Device(format!("SGX collateral {}: {e}", collateral_file.display()))
        })?;
        let mut platform = GramineSgxPlatform {
            dir: dir.to_path_buf(),
            collateral,
            measurement: String::new(),
        };
        let quote = platform.quote(&[0; 32])?;
        platform.measurement = quote.get(QUOTE_MRENCLAVE).map(hex::encode).ok_or_else(|| {
            AttestationError::Device(format!("a quote of {} bytes has no MRENCLAVE", quote.len()))
        })?;
        Ok(platform)
    }

    fn quote(&self, report_data: &Digest) -> Result<Vec<u8>, AttestationError> {
        let io = |what: &str, e: std::io::Error| {
            AttestationError::Device(format!("{}/{what}: {e}", self.dir.display()))
        };
        let mut data = [0u8; 64];
        data[..32].copy_from_slice(report_data);
        std::fs::write(self.dir.join("user_report_data"), data).map_err(|e| io("user_report_data", e))?;
        std::fs::read(self.dir.join("quote")).map_err(|e| io("quote", e))
    }
}

impl Platform for GramineSgxPlatform {
    fn evidence(&self, report_data: &Digest) -> Result<QuoteInfo, AttestationError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(QuoteInfo {
            format: PlatformKind::Sgx.format().into(),
            quote: b64.encode(self.quote(report_data)?),
            endorsements: b64.encode(&self.collateral),
            uvm_endorsements: None,
        })
    }

    fn measurement(&self) -> String {
        self.measurement.clone()
    }
}

/// Where an AMD SEV-SNP guest gets attestation reports from its AMD Secure Processor.
pub trait SnpReportSource: Send + Sync {
    /// A raw attestation report (1184 bytes) carrying `report_data`.
    fn report(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, AttestationError>;
}

/// Linux's `/dev/sev-guest` (the `SNP_GET_REPORT` ioctl, through the `sev` crate), at VMPL 0.
pub struct SevGuestDevice {
    firmware: std::sync::Mutex<sev::firmware::guest::Firmware>,
}

impl SevGuestDevice {
    /// The guest device's path (fixed by the `sev` crate and the kernel).
    pub const PATH: &'static str = "/dev/sev-guest";

    /// Opens `/dev/sev-guest`.
    pub fn open() -> Result<Self, AttestationError> {
        let firmware = sev::firmware::guest::Firmware::open().map_err(|e| {
            AttestationError::Device(format!("{}: {e} (not inside an SEV-SNP guest?)", Self::PATH))
        })?;
        Ok(SevGuestDevice {
            firmware: std::sync::Mutex::new(firmware),
        })
    }
}

impl SnpReportSource for SevGuestDevice {
    fn report(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, AttestationError> {
        let mut firmware = self.firmware.lock().unwrap_or_else(|p| p.into_inner());
        firmware
            .get_report(None, Some(*report_data), Some(0))
            .map_err(|e| AttestationError::Device(format!("{} SNP_GET_REPORT: {e}", Self::PATH)))
    }
}

/// Linux's configfs-tsm report interface (kernels 6.7 and later; `/sys/kernel/config/tsm/report`): a directory per
/// request, report data written to `inblob`, the report read from `outblob`. The kernel refuses a read whose request
/// changed meanwhile, so requests are serialised.
pub struct TsmReport {
    entry: std::path::PathBuf,
    lock: std::sync::Mutex<()>,
}

impl TsmReport {
    /// The usual configfs-tsm report directory.
    pub const ROOT: &'static str = "/sys/kernel/config/tsm/report";

    /// Makes this node's request entry under `root` and checks that the provider is the SEV-SNP guest driver.
    pub fn open(root: &std::path::Path) -> Result<Self, AttestationError> {
        let entry = root.join("synod-node");
        std::fs::create_dir_all(&entry).map_err(|e| {
            AttestationError::Device(format!("{}: {e} (no configfs-tsm here?)", entry.display()))
        })?;
        let provider = std::fs::read_to_string(entry.join("provider"))
            .map_err(|e| AttestationError::Device(format!("{}/provider: {e}", entry.display())))?;
        if provider.trim() != "sev_guest" {
            return Err(AttestationError::Device(format!(
                "configfs-tsm provider is {:?}, not \"sev_guest\" (not an SEV-SNP guest)",
                provider.trim()
            )));
        }
        Ok(TsmReport {
            entry,
            lock: std::sync::Mutex::new(()),
        })
    }
}

impl SnpReportSource for TsmReport {
    fn report(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, AttestationError> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let io = |what: &str, e: std::io::Error| {
            AttestationError::Device(format!("{}/{what}: {e}", self.entry.display()))
        };
        std::fs::write(self.entry.join("inblob"), report_data).map_err(|e| io("inblob", e))?;
        std::fs::read(self.entry.join("outblob")).map_err(|e| io("outblob", e))
    }
}

/// AMD SEV-SNP: reports from the guest's AMD Secure Processor (`/dev/sev-guest`, or configfs-tsm), with the
/// endorsements the operator keeps beside the node (`--snp-endorsements`: the chip's VCEK, AMD's ASK and ARK, PEM,
/// as AMD's KDS or Azure's THIM serve them).
pub struct SnpPlatform {
    source: Box<dyn SnpReportSource>,
    endorsements: Vec<u8>,
    uvm_endorsements: Option<Vec<u8>>,
    measurement: String,
}

/// Where MEASUREMENT sits in an SNP attestation report (AMD SEV-SNP ABI, table 21).
const SNP_REPORT_MEASUREMENT: std::ops::Range<usize> = 0x90..0xC0;

impl SnpPlatform {
    /// An SNP platform on `source`, with the endorsements in `endorsements_file`; learns its own measurement from
    /// a first report.
    pub fn open(
        source: Box<dyn SnpReportSource>,
        endorsements_file: &std::path::Path,
    ) -> Result<Self, AttestationError> {
        let endorsements = std::fs::read(endorsements_file).map_err(|e| {
            AttestationError::Device(format!("SNP endorsements {}: {e}", endorsements_file.display()))
        })?;
        let report = source.report(&[0; 64])?;
        let measurement = report
            .get(SNP_REPORT_MEASUREMENT)
            .map(hex::encode)
            .ok_or_else(|| {
                AttestationError::Device(format!(
                    "an SNP report of {} bytes has no measurement",
                    report.len()
                ))
            })?;
        Ok(SnpPlatform {
            source,
            endorsements,
            uvm_endorsements: None,
            measurement,
        })
    }

    /// Attaches a UVM endorsement (COSE Sign1, binary or base64, as Azure's confidential containers provide it in
    /// `reference-info-base64`) to every report.
    pub fn with_uvm_endorsements(mut self, file: &std::path::Path) -> Result<Self, AttestationError> {
        let bytes = std::fs::read(file)
            .map_err(|e| AttestationError::Device(format!("UVM endorsements {}: {e}", file.display())))?;
        self.uvm_endorsements = Some(synod_core::attestation::uvm_endorsement_from_file(bytes));
        Ok(self)
    }

    /// The guest's report source: `/dev/sev-guest` where it exists, else configfs-tsm under `tsm_root`.
    pub fn default_source(tsm_root: &std::path::Path) -> Result<Box<dyn SnpReportSource>, AttestationError> {
        if std::path::Path::new(SevGuestDevice::PATH).exists() {
            return Ok(Box::new(SevGuestDevice::open()?));
        }
        TsmReport::open(tsm_root)
            .map(|t| Box::new(t) as Box<dyn SnpReportSource>)
            .map_err(|e| {
                AttestationError::Device(format!(
                    "neither {} nor configfs-tsm: {e} (not inside an SEV-SNP guest?)",
                    SevGuestDevice::PATH
                ))
            })
    }
}

impl Platform for SnpPlatform {
    fn evidence(&self, report_data: &Digest) -> Result<QuoteInfo, AttestationError> {
        let mut data = [0u8; 64];
        data[..32].copy_from_slice(report_data);
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(QuoteInfo {
            format: PlatformKind::Snp.format().into(),
            quote: b64.encode(self.source.report(&data)?),
            endorsements: b64.encode(&self.endorsements),
            uvm_endorsements: self.uvm_endorsements.as_ref().map(|u| b64.encode(u)),
        })
    }

    fn measurement(&self) -> String {
        self.measurement.clone()
    }
}

/// The platform a node runs on, from its configuration: Gramine SGX when `--sgx-collateral` is given, SEV-SNP when
/// `--snp-endorsements` is, else `virtual`.
pub fn for_config(cfg: &crate::config::NodeConfig) -> Result<std::sync::Arc<dyn Platform>, AttestationError> {
    if let Some(collateral) = &cfg.sgx_collateral {
        return Ok(std::sync::Arc::new(GramineSgxPlatform::open(
            &cfg.gramine_attestation_dir,
            collateral,
        )?));
    }
    if let Some(endorsements) = &cfg.snp_endorsements {
        let source = SnpPlatform::default_source(&cfg.tsm_report_dir)?;
        let mut platform = SnpPlatform::open(source, endorsements)?;
        if let Some(uvm) = &cfg.snp_uvm_endorsements {
            platform = platform.with_uvm_endorsements(uvm)?;
        }
        return Ok(std::sync::Arc::new(platform));
    }
    Ok(std::sync::Arc::new(VirtualPlatform::for_node(
        cfg.virtual_measurement,
    )?))
}

/// Verifies evidence as it travels in a join request (base64 evidence and endorsements, CCF's format names), as of
/// now.
pub fn verify(quote: &QuoteInfo) -> Result<Verified, AttestationError> {
    use synod_core::attestation::AttestationError as Refused;
    let platform = PlatformKind::from_format(&quote.format)
        .ok_or_else(|| Refused::UnsupportedFormat(quote.format.clone()))?;
    let decode = |what: &str, b64: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| Refused::Malformed(format!("{what} is not base64: {e}")))
    };
    let evidence = decode("quote", &quote.quote)?;
    let endorsements = decode("endorsements", &quote.endorsements)?;
    let uvm = quote
        .uvm_endorsements
        .as_deref()
        .map(|u| decode("uvm_endorsements", u))
        .transpose()?;
    Ok(synod_core::attestation::verify_with_uvm(
        platform,
        &evidence,
        &endorsements,
        uvm.as_deref(),
        synod_core::attestation::now_secs(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_evidence_round_trips_and_malformed_is_refused() {
        let p = VirtualPlatform::with_measurement([3; 32]);
        let q = p.evidence(&[7; 32]).unwrap();
        let v = verify(&q).expect("verifies");
        assert!(v.binds(&[7; 32]));
        assert_eq!(v.measurement, p.measurement());
        assert!(verify(&QuoteInfo {
            format: "TDX_v9".into(),
            ..q.clone()
        })
        .is_err());
        assert!(verify(&QuoteInfo {
            quote: "!!".into(),
            ..q.clone()
        })
        .is_err());
        let bad =
            base64::engine::general_purpose::STANDARD.encode(br#"{"measurement":"zz","report_data":"00"}"#);
        assert!(verify(&QuoteInfo { quote: bad, ..q }).is_err());
    }

    /// The production SGX path against a fake `/dev/attestation`: report data written where Gramine wants it, the
    /// quote read back, MRENCLAVE learnt from it, the collateral attached; a directory that is not Gramine's, or
    /// not DCAP, is refused with a clear reason.
    #[test]
    fn gramine_sgx_evidence_comes_from_dev_attestation() {
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("core/tests/fixtures/attestation");
        let dev = tempfile::tempdir().unwrap();
        let collateral = fixtures.join("sgx_quote_collateral.json");
        let err = GramineSgxPlatform::open(dev.path(), &collateral).err().unwrap();
        assert!(
            err.to_string().contains("not inside a Gramine SGX enclave"),
            "{err}"
        );
        std::fs::write(dev.path().join("attestation_type"), "epid\n").unwrap();
        let err = GramineSgxPlatform::open(dev.path(), &collateral).err().unwrap();
        assert!(err.to_string().contains("not \"dcap\""), "{err}");
        std::fs::write(dev.path().join("attestation_type"), "dcap\n").unwrap();
        std::fs::copy(fixtures.join("sgx_quote.bin"), dev.path().join("quote")).unwrap();
        let p = GramineSgxPlatform::open(dev.path(), &collateral).expect("opens");
        assert_eq!(
            p.measurement(),
            "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
        );
        let q = p.evidence(&[9; 32]).unwrap();
        assert_eq!(q.format, "OE_SGX_v1");
        let written = std::fs::read(dev.path().join("user_report_data")).unwrap();
        assert_eq!(written, [[9u8; 32], [0; 32]].concat());
        // The recorded quote verifies through the join path's decoder (its collateral expired in 2025: refused
        // for that, which proves it was decoded and checked, not refused as malformed).
        let err = verify(&q).unwrap_err();
        assert!(
            err.to_string().contains("SGX collateral (TCB info) expired at"),
            "{err}"
        );
    }

    /// The production SEV-SNP path against a fake configfs-tsm (a directory as the kernel lays it out, holding a
    /// real recorded report): report data written to `inblob`, the report read from `outblob`, MEASUREMENT learnt
    /// from it, the endorsements attached; the evidence verifies through the join path's verifier. A provider that
    /// is not the SNP guest driver, or no interface at all, is refused with a clear reason.
    #[test]
    fn snp_evidence_comes_from_the_guest_device() {
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("core/tests/fixtures/attestation");
        let report = hex::decode(
            std::fs::read_to_string(fixtures.join("snp_report_milan.hex"))
                .unwrap()
                .trim(),
        )
        .unwrap();
        let endorsements = fixtures.join("snp_endorsements_milan.pem");
        let root = tempfile::tempdir().unwrap();
        let err = TsmReport::open(&root.path().join("empty")).err().unwrap();
        assert!(err.to_string().contains("provider"), "{err}");
        let entry = root.path().join("synod-node");
        std::fs::create_dir_all(&entry).unwrap();
        std::fs::write(entry.join("provider"), "tdx_guest\n").unwrap();
        let err = TsmReport::open(root.path()).err().unwrap();
        assert!(err.to_string().contains("not \"sev_guest\""), "{err}");
        std::fs::write(entry.join("provider"), "sev_guest\n").unwrap();
        std::fs::write(entry.join("outblob"), &report).unwrap();
        let source = TsmReport::open(root.path()).expect("opens");
        let p = SnpPlatform::open(Box::new(source), &endorsements).expect("opens");
        assert_eq!(p.measurement(), hex::encode(&report[0x90..0xC0]));
        let q = p.evidence(&[9; 32]).unwrap();
        assert_eq!(q.format, "AMD_SEV_SNP_v1");
        let written = std::fs::read(entry.join("inblob")).unwrap();
        assert_eq!(written, [[9u8; 32], [0; 32]].concat());
        // The recorded report (whose own report data is not ours) verifies, chain and signature, as of 2025.
        let b64 = base64::engine::general_purpose::STANDARD;
        let v = synod_core::attestation::verify(
            PlatformKind::Snp,
            &b64.decode(&q.quote).unwrap(),
            &b64.decode(&q.endorsements).unwrap(),
            1_750_000_000,
        )
        .expect("the recorded report verifies");
        assert_eq!(v.measurement, p.measurement());
        // With a UVM endorsement file (base64, as Azure provides it): it travels with every report and the join
        // path's verifier checks it (the recorded VCEK is valid until 2030).
        let uvm = root.path().join("reference-info-base64");
        std::fs::write(
            &uvm,
            b64.encode(std::fs::read(fixtures.join("uvm_endorsements_es384.cose")).unwrap()),
        )
        .unwrap();
        let source = TsmReport::open(root.path()).expect("opens");
        let p = SnpPlatform::open(Box::new(source), &endorsements)
            .and_then(|p| p.with_uvm_endorsements(&uvm))
            .expect("opens");
        let q = p.evidence(&[9; 32]).unwrap();
        assert!(q.uvm_endorsements.is_some());
        let v = verify(&q).expect("verifies with its UVM endorsement");
        assert_eq!(v.uvm_endorsements.map(|e| e.svn), Some("101".into()));
        // A device that fails is named.
        struct Broken;
        impl SnpReportSource for Broken {
            fn report(&self, _: &[u8; 64]) -> Result<Vec<u8>, AttestationError> {
                Err(AttestationError::Device("SNP_GET_REPORT: firmware error".into()))
            }
        }
        let err = SnpPlatform::open(Box::new(Broken), &endorsements).err().unwrap();
        assert!(err.to_string().contains("SNP_GET_REPORT"), "{err}");
    }
}
