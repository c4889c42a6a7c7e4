//! The PKCS#11 token behind the `pkcs11` seal, through the `cryptoki` binding.
//!
//! [`Hsm::open`] loads the provider's library, finds the token by label, and logs in with
//! the user PIN once: a refused PIN stops the start (the daemon never retries it, so it never
//! locks the token), and a PIN the token reports as locked or at its final try is not tried.
//! [`Hsm::key`] finds the wrapping key by label and checks it is one non-extractable,
//! sensitive AES-256 secret key that may encrypt and decrypt. The root key is encrypted and
//! decrypted with AES-GCM (a 12-byte nonce and a 128-bit tag): CKM_AES_GCM, or Cloud KMS's
//! vendor-defined CKM_CLOUDKMS_AES_GCM ([`WrapMechanism`]); the plaintext root key only ever
//! lives in zeroized buffers.

use super::SealError;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use zeroize::Zeroizing;

/// The systemd credential the PIN is read from when no PIN file is configured.
pub const PIN_CREDENTIAL: &str = "pkcs11-pin";
const NONCE_LEN: usize = 12;
const TAG_BITS: u64 = 128;

/// Google's vendor-defined AES-GCM of the Cloud KMS PKCS#11 library (`CKM_CLOUDKMS_AES_GCM`):
/// the nonce is made by Cloud KMS and written into the parameters.
const CKM_CLOUDKMS_AES_GCM: u64 = 0x8000_0000 | 0x1E100 | 0x01;

/// How the token encrypts the root key: AES-256-GCM, as the provider names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WrapMechanism {
    /// CKM_AES_GCM (SoftHSM2, AWS CloudHSM and most HSMs); the daemon makes the nonce, or the
    /// HSM does and writes it back.
    #[default]
    AesGcm,
    /// CKM_CLOUDKMS_AES_GCM of Google's Cloud KMS library, whose service makes the nonce.
    CloudkmsAesGcm,
}

impl WrapMechanism {
    /// Its byte in a sealed root key.
    pub fn code(self) -> u8 {
        match self {
            WrapMechanism::AesGcm => 1,
            WrapMechanism::CloudkmsAesGcm => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(WrapMechanism::AesGcm),
            2 => Some(WrapMechanism::CloudkmsAesGcm),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WrapMechanism::AesGcm => "aes-gcm",
            WrapMechanism::CloudkmsAesGcm => "cloudkms-aes-gcm",
        }
    }
}

/// Where the token and its key are, and where its PIN is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Settings {
    /// The provider's PKCS#11 library (`.so`).
    pub module: PathBuf,
    pub token_label: String,
    pub key_label: String,
    /// The file holding the user PIN; `None`: the `pkcs11-pin` systemd credential.
    pub pin_file: Option<PathBuf>,
    pub mechanism: WrapMechanism,
}

impl Pkcs11Settings {
    /// Where the PIN is read from: the PIN file, else `$CREDENTIALS_DIRECTORY/pkcs11-pin`.
    pub fn pin_path(&self) -> Result<PathBuf, SealError> {
        if let Some(path) = &self.pin_file {
            return Ok(path.clone());
        }
        std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|dir| PathBuf::from(dir).join(PIN_CREDENTIAL))
            .filter(|path| path.exists())
            .ok_or_else(|| {
                SealError::Pin(
                    "no PIN given: set --pkcs11-pin-file, or a pkcs11-pin systemd credential"
                        .into(),
                )
            })
    }
}

fn token_error(operation: &'static str) -> impl Fn(CkError) -> SealError {
    move |err| SealError::Token {
        operation,
        code: match err {
            CkError::Pkcs11(rv, _) => format!("{rv:?}"),
            other => other.to_string(),
        },
    }
}

/// A key in the token that wraps root keys.
#[derive(Debug, Clone)]
pub struct WrapKey {
    handle: ObjectHandle,
    label: String,
}

impl WrapKey {
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// A logged-in session with the token.
pub struct Hsm {
    token_label: String,
    mechanism: WrapMechanism,
    slot: Slot,
    session: Mutex<Session>,
    // Declared last: the session closes before the library is finalized.
    ctx: Pkcs11,
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("token_label", &self.token_label)
            .finish_non_exhaustive()
    }
}

fn read_pin(path: &Path) -> Result<AuthPin, SealError> {
    let meta =
        std::fs::metadata(path).map_err(|e| SealError::Pin(format!("{}: {e}", path.display())))?;
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(SealError::Pin(format!(
            "{} is accessible by other users; run `chmod go-rwx {}`",
            path.display(),
            path.display()
        )));
    }
    let raw = Zeroizing::new(
        std::fs::read(path).map_err(|e| SealError::Pin(format!("{}: {e}", path.display())))?,
    );
    let text = std::str::from_utf8(raw.trim_ascii())
        .map_err(|_| SealError::Pin(format!("{} is not UTF-8 text", path.display())))?;
    if text.is_empty() {
        return Err(SealError::Pin(format!("{} is empty", path.display())));
    }
    // Exactly its length, so that the conversion to a boxed str moves it without a copy.
    let mut pin = String::with_capacity(text.len());
    pin.push_str(text);
    Ok(AuthPin::from(pin))
}

impl Hsm {
    /// Loads the library, finds the token and logs in (one try).
    pub fn open(settings: &Pkcs11Settings) -> Result<Self, SealError> {
        let pin = read_pin(&settings.pin_path()?)?;
        Self::open_with(settings, Some(&pin), false)
    }

    /// As [`Hsm::open`] with a read-write session, to create keys.
    pub fn open_rw(settings: &Pkcs11Settings) -> Result<Self, SealError> {
        let pin = read_pin(&settings.pin_path()?)?;
        Self::open_with(settings, Some(&pin), true)
    }

    fn open_with(
        settings: &Pkcs11Settings,
        pin: Option<&AuthPin>,
        rw: bool,
    ) -> Result<Self, SealError> {
        let library = |reason: String| SealError::Library {
            path: settings.module.display().to_string(),
            reason,
        };
        if !settings.module.is_file() {
            return Err(library("no such file".into()));
        }
        let ctx = Pkcs11::new(&settings.module).map_err(|e| library(e.to_string()))?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(err) => return Err(library(format!("C_Initialize failed: {err}"))),
        }
        let (slot, token) = find_token(&ctx, &settings.token_label)?;
        if token.user_pin_locked() {
            return Err(SealError::PinBlocked {
                label: settings.token_label.clone(),
                state: "locked",
            });
        }
        if token.user_pin_final_try() {
            return Err(SealError::PinBlocked {
                label: settings.token_label.clone(),
                state: "at its final try",
            });
        }
        let session = if rw {
            ctx.open_rw_session(slot)
        } else {
            ctx.open_ro_session(slot)
        }
        .map_err(token_error("open a session"))?;
        match session.login(UserType::User, pin) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinInvalid, _)) => {
                return Err(SealError::WrongPin {
                    label: settings.token_label.clone(),
                });
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                return Err(SealError::PinBlocked {
                    label: settings.token_label.clone(),
                    state: "locked",
                });
            }
            Err(err) => return Err(token_error("log in")(err)),
        }
        Ok(Self {
            token_label: settings.token_label.clone(),
            mechanism: settings.mechanism,
            slot,
            session: Mutex::new(session),
            ctx,
        })
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn token_label(&self) -> &str {
        &self.token_label
    }

    /// The mechanism the token encrypts root keys with.
    pub fn mechanism(&self) -> WrapMechanism {
        self.mechanism
    }

    /// Runs `op` with the mechanism for `params`.
    fn with_mechanism<T>(
        &self,
        params: GcmParams<'_>,
        op: impl FnOnce(&Mechanism<'_>) -> Result<T, SealError>,
    ) -> Result<T, SealError> {
        match self.mechanism {
            WrapMechanism::AesGcm => op(&Mechanism::AesGcm(params)),
            WrapMechanism::CloudkmsAesGcm => {
                let kind = MechanismType::new_vendor_defined(CKM_CLOUDKMS_AES_GCM)
                    .map_err(token_error("set up CKM_CLOUDKMS_AES_GCM"))?;
                op(&Mechanism::VendorDefined(VendorDefinedMechanism::new(
                    kind,
                    Some(&params),
                )))
            }
        }
    }

    /// Finds the wrapping key `label` and checks its type and attributes.
    pub fn key(&self, label: &str) -> Result<WrapKey, SealError> {
        let session = self.session();
        let found = session
            .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
            .map_err(token_error("search for the key"))?;
        let wrong = |reason: &str| SealError::KeyType {
            label: label.to_owned(),
            reason: reason.to_owned(),
        };
        let handle = match found.as_slice() {
            [] => {
                return Err(SealError::KeyMissing {
                    token: self.token_label.clone(),
                    label: label.to_owned(),
                });
            }
            [one] => *one,
            _ => return Err(wrong("several objects carry this label")),
        };
        let attributes = session
            .get_attributes(
                handle,
                &[
                    AttributeType::Class,
                    AttributeType::KeyType,
                    AttributeType::ValueLen,
                    AttributeType::Extractable,
                    AttributeType::Sensitive,
                    AttributeType::Encrypt,
                    AttributeType::Decrypt,
                ],
            )
            .map_err(token_error("read the key's attributes"))?;
        let (mut class, mut key_type, mut len) = (None, None, None);
        let (mut extractable, mut sensitive, mut encrypt, mut decrypt) =
            (true, false, false, false);
        for attribute in attributes {
            match attribute {
                Attribute::Class(c) => class = Some(c),
                Attribute::KeyType(t) => key_type = Some(t),
                Attribute::ValueLen(l) => len = Some(u64::from(l)),
                Attribute::Extractable(b) => extractable = b,
                Attribute::Sensitive(b) => sensitive = b,
                Attribute::Encrypt(b) => encrypt = b,
                Attribute::Decrypt(b) => decrypt = b,
                _ => {}
            }
        }
        if class != Some(ObjectClass::SECRET_KEY) {
            return Err(wrong("it is not a secret key"));
        }
        if key_type != Some(KeyType::AES) {
            return Err(wrong("it is not an AES key"));
        }
        // Some providers (Cloud KMS) do not tell a non-extractable key's length.
        if len.is_some_and(|len| len != 32) {
            return Err(wrong("it is not 256 bits long"));
        }
        if extractable || !sensitive {
            return Err(wrong(
                "it can leave the token (extractable or not sensitive)",
            ));
        }
        if !encrypt || !decrypt {
            return Err(wrong("it may not encrypt and decrypt"));
        }
        Ok(WrapKey {
            handle,
            label: label.to_owned(),
        })
    }

    /// Creates a non-extractable, sensitive AES-256 key labelled `label` in the token
    /// (refused if an object with that label exists).
    pub fn create_key(&self, label: &str) -> Result<WrapKey, SealError> {
        {
            let session = self.session();
            let existing = session
                .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
                .map_err(token_error("search for the key"))?;
            if !existing.is_empty() {
                return Err(SealError::LabelTaken {
                    token: self.token_label.clone(),
                    label: label.to_owned(),
                });
            }
            session
                .generate_key(
                    &Mechanism::AesKeyGen,
                    &[
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Encrypt(true),
                        Attribute::Decrypt(true),
                        Attribute::ValueLen(32u64.into()),
                        Attribute::Label(label.as_bytes().to_vec()),
                    ],
                )
                .map_err(token_error("generate the key"))?;
        }
        self.key(label)
    }

    /// Encrypts `plain` with AES-GCM under `key`; answers the nonce (which some HSMs make
    /// themselves, overwriting the one given) and the ciphertext with its tag.
    pub fn encrypt(
        &self,
        key: &WrapKey,
        aad: &[u8],
        plain: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), SealError> {
        let mut iv = [0u8; NONCE_LEN];
        // Cloud KMS wants a zeroed buffer, which it fills with its own nonce.
        if self.mechanism == WrapMechanism::AesGcm {
            getrandom::fill(&mut iv).map_err(|_| SealError::Token {
                operation: "make a nonce",
                code: "the system random number generator failed".into(),
            })?;
        }
        let ciphertext = {
            let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())
                .map_err(token_error("set up AES-GCM"))?;
            self.with_mechanism(params, |mechanism| {
                self.session()
                    .encrypt(mechanism, key.handle, plain)
                    .map_err(token_error("encrypt with the wrapping key"))
            })?
        };
        Ok((iv.to_vec(), ciphertext))
    }

    /// Decrypts and authenticates an AES-GCM ciphertext under `key`.
    pub fn decrypt(
        &self,
        key: &WrapKey,
        aad: &[u8],
        iv: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let mut iv = iv.to_vec();
        let params =
            GcmParams::new(&mut iv, aad, TAG_BITS.into()).map_err(token_error("set up AES-GCM"))?;
        self.with_mechanism(params, |mechanism| {
            self.session()
                .decrypt(mechanism, key.handle, ciphertext)
                .map(Zeroizing::new)
                .map_err(token_error("decrypt with the wrapping key"))
        })
    }

    /// Whether the token still answers with the key: in a new session (which shares the
    /// login of the first, so no PIN is sent), finds the key again and encrypts a block. A
    /// token that comes back after an outage answers again.
    pub fn probe(&self, key: &WrapKey) -> Result<(), SealError> {
        let session = self
            .ctx
            .open_ro_session(self.slot)
            .map_err(token_error("open a session"))?;
        let found = session
            .find_objects(&[Attribute::Label(key.label.as_bytes().to_vec())])
            .map_err(token_error("search for the key"))?;
        let [handle] = found.as_slice() else {
            return Err(SealError::KeyMissing {
                token: self.token_label.clone(),
                label: key.label.clone(),
            });
        };
        // A fresh random nonce (zeroed for Cloud KMS, which makes its own).
        let mut iv = [0u8; NONCE_LEN];
        if self.mechanism == WrapMechanism::AesGcm {
            getrandom::fill(&mut iv).map_err(|_| SealError::Token {
                operation: "make a nonce",
                code: "the system random number generator failed".into(),
            })?;
        }
        let params = GcmParams::new(&mut iv, b"sharevault seal probe", TAG_BITS.into())
            .map_err(token_error("set up AES-GCM"))?;
        self.with_mechanism(params, |mechanism| {
            session
                .encrypt(mechanism, *handle, &[0u8; 16])
                .map(|_| ())
                .map_err(token_error("encrypt with the wrapping key"))
        })
    }
}

fn find_token(ctx: &Pkcs11, label: &str) -> Result<(Slot, cryptoki::slot::TokenInfo), SealError> {
    let slots = ctx
        .get_slots_with_initialized_token()
        .map_err(token_error("list its slots"))?;
    let mut seen = Vec::new();
    for slot in slots {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        let found = info.label().trim_end();
        if found == label {
            return Ok((slot, info));
        }
        seen.push(format!("{found:?}"));
    }
    Err(SealError::TokenMissing {
        label: label.to_owned(),
        seen: if seen.is_empty() {
            "none".into()
        } else {
            seen.join(", ")
        },
    })
}
