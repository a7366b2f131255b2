//! What booting hosts fetch over HTTP: the image manifest (`boot-images/images.toml`) and
//! the iPXE script templates (`boot-images/ipxe/*.ipxe`), loaded and checked together with
//! the inventory, and the pure choice of which script a host gets.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::inventory::{Host, Inventory, Problem, Profile};
use crate::types::{HostState, MacAddr};

/// The iPXE templates every boot-images directory must have.
pub const TEMPLATES: &[&str] = &["discovery", "install", "local", "rescue"];

/// One bootable image from the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    pub name: String,
    /// Paths relative to the boot-images directory (also their URL path under /images/).
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
}

/// The manifest plus templates, as loaded.
#[derive(Debug, Clone, Default)]
pub struct BootAssets {
    pub images: Vec<Image>,
    /// Template name → source.
    pub templates: BTreeMap<String, String>,
    /// Not fatal, but worth a look (`check-config` prints them): e.g. an image file that is
    /// not built yet. Hosts that need it get a script that says so.
    pub warnings: Vec<String>,
    /// The templates compiled once at load: parsing a template per request cost more than
    /// rendering it (bench/http.sh, script path).
    compiled: std::sync::Arc<minijinja::Environment<'static>>,
}

/// The environment every script renders in: strict about undefined variables (a typo in a
/// template is an error, not an empty kernel argument) and keeping the final newline.
fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestWire {
    #[serde(default)]
    image: Vec<ImageWire>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageWire {
    name: String,
    kernel: String,
    initrd: String,
    #[serde(default)]
    cmdline: String,
    /// Hex SHA-256 of the kernel; checked at load when set.
    kernel_sha256: Option<String>,
    initrd_sha256: Option<String>,
}

impl BootAssets {
    pub fn image(&self, name: &str) -> Option<&Image> {
        self.images.iter().find(|i| i.name == name)
    }
}

/// Loads `dir/images.toml` (optional: no manifest, no images) and `dir/ipxe/*.ipxe`,
/// checking names, paths, file presence and checksums. Errors name file, entry and field.
pub fn load(dir: &Path) -> Result<BootAssets, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut assets = BootAssets::default();
    let manifest = dir.join("images.toml");
    let problem = |entry: &str, field: &str, reason: String| Problem {
        file: manifest.clone(),
        entry: entry.to_string(),
        field: field.to_string(),
        reason,
    };
    match std::fs::read_to_string(&manifest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => problems.push(problem("-", "-", format!("cannot read: {e}"))),
        Ok(text) => match toml::from_str::<ManifestWire>(&text) {
            Err(e) => problems.push(problem("-", "-", e.message().to_string())),
            Ok(w) => {
                for img in w.image {
                    let entry = format!("image {:?}", img.name);
                    if assets.images.iter().any(|i| i.name == img.name) {
                        problems.push(problem(&entry, "name", "duplicate image name".into()));
                        continue;
                    }
                    for (field, path, sha) in [
                        ("kernel", &img.kernel, &img.kernel_sha256),
                        ("initrd", &img.initrd, &img.initrd_sha256),
                    ] {
                        match check_file(dir, path, sha.as_deref()) {
                            Ok(()) => {}
                            Err(FileCheck::Missing) => assets.warnings.push(format!(
                                "{}: {entry}: {field}: {} does not exist (not built yet?)",
                                manifest.display(),
                                dir.join(path).display()
                            )),
                            Err(FileCheck::Bad(reason)) => {
                                problems.push(problem(&entry, field, reason))
                            }
                        }
                    }
                    assets.images.push(Image {
                        name: img.name,
                        kernel: img.kernel,
                        initrd: img.initrd,
                        cmdline: img.cmdline,
                    });
                }
            }
        },
    }
    let tdir = dir.join("ipxe");
    let mut compiled = environment();
    for name in TEMPLATES {
        let path = tdir.join(format!("{name}.ipxe"));
        match std::fs::read_to_string(&path) {
            Ok(src) => {
                // Compile now so a template error is a load error, not a boot failure.
                if let Err(e) = compiled.add_template_owned(name.to_string(), src.clone()) {
                    problems.push(Problem {
                        file: path.clone(),
                        entry: format!("template {name}"),
                        field: "-".into(),
                        reason: e.to_string(),
                    });
                }
                assets.templates.insert(name.to_string(), src);
            }
            Err(e) => problems.push(Problem {
                file: path,
                entry: format!("template {name}"),
                field: "-".into(),
                reason: format!("cannot read: {e}"),
            }),
        }
    }
    assets.compiled = std::sync::Arc::new(compiled);
    if problems.is_empty() {
        Ok(assets)
    } else {
        Err(problems)
    }
}

enum FileCheck {
    Missing,
    Bad(String),
}

/// A manifest path must stay inside the directory, be a regular file and match its checksum.
fn check_file(dir: &Path, rel: &str, sha: Option<&str>) -> Result<(), FileCheck> {
    let p = Path::new(rel);
    if rel.is_empty()
        || p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(FileCheck::Bad(format!(
            "{rel:?}: must be a relative path inside the boot-images directory"
        )));
    }
    let full = dir.join(p);
    let meta = match std::fs::metadata(&full) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(FileCheck::Missing),
        Err(e) => return Err(FileCheck::Bad(format!("{}: {e}", full.display()))),
    };
    if !meta.is_file() {
        return Err(FileCheck::Bad(format!(
            "{} is not a regular file",
            full.display()
        )));
    }
    if let Some(want) = sha {
        let got =
            sha256_file(&full).map_err(|e| FileCheck::Bad(format!("{}: {e}", full.display())))?;
        if !got.eq_ignore_ascii_case(want) {
            return Err(FileCheck::Bad(format!(
                "sha256 of {} is {got}, the manifest says {want}",
                full.display()
            )));
        }
    }
    Ok(())
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Which script a host gets, from its state and profile (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan<'a> {
    /// Unknown machine: record it and boot the discovery image if there is one.
    Discovery,
    /// Install the profile's image; the host moves to `provisioning`.
    Install { image: &'a Image },
    /// Already provisioned: boot from the local disk.
    Local,
    /// In maintenance: the rescue script (the profile's image with `rescue` on the cmdline).
    Rescue { image: Option<&'a Image> },
    /// Can't boot it as asked; the script prints why and falls back to the local disk.
    Broken { reason: String },
}

impl Plan<'_> {
    pub fn template(&self) -> &'static str {
        match self {
            Plan::Discovery => "discovery",
            Plan::Install { .. } => "install",
            Plan::Local | Plan::Broken { .. } => "local",
            Plan::Rescue { .. } => "rescue",
        }
    }
}

/// The plan for a host in `state` with `profile` (None: not in the inventory).
pub fn plan<'a>(state: HostState, profile: Option<&Profile>, assets: &'a BootAssets) -> Plan<'a> {
    let image = |p: &Profile| -> Result<&'a Image, String> {
        let name = p
            .image
            .as_deref()
            .ok_or_else(|| format!("profile {:?} names no image", p.name))?;
        assets
            .image(name)
            .ok_or_else(|| format!("image {name:?} is not in images.toml"))
    };
    match state {
        HostState::Unknown | HostState::Discovered => Plan::Discovery,
        HostState::Provisioned | HostState::Configuring | HostState::Ready => Plan::Local,
        HostState::Maintenance => Plan::Rescue {
            image: profile.and_then(|p| image(p).ok()),
        },
        HostState::Registered | HostState::Provisioning | HostState::Failed => match profile {
            None => Plan::Broken {
                reason: "the host has no boot profile".into(),
            },
            Some(p) if p.template == "local" => Plan::Local,
            Some(p) => match image(p) {
                Ok(image) => Plan::Install { image },
                Err(reason) => Plan::Broken { reason },
            },
        },
    }
}

/// Everything a template may use.
#[derive(Debug, Clone, Serialize)]
pub struct ScriptContext<'a> {
    pub base_url: &'a str,
    pub mac: String,
    pub host: Option<&'a str>,
    pub ip: Option<std::net::Ipv4Addr>,
    pub kernel_url: Option<String>,
    pub initrd_url: Option<String>,
    /// The initrd's file name (Debian's 2019 iPXE EFI needs `initrd=NAME` on the cmdline).
    pub initrd_name: Option<String>,
    pub cmdline: String,
    /// Per-boot token the booted OS must present when it phones home.
    pub token: Option<&'a str>,
    pub phone_home_url: String,
    pub reason: Option<String>,
}

/// Renders the script for `plan`.
pub fn render(
    assets: &BootAssets,
    plan: &Plan,
    base_url: &str,
    mac: MacAddr,
    host: Option<&Host>,
    inv: &Inventory,
    token: Option<&str>,
) -> Result<String, minijinja::Error> {
    let image = match plan {
        Plan::Install { image } => Some(*image),
        Plan::Rescue { image } => *image,
        _ => None,
    };
    let profile_cmdline = host
        .and_then(|h| inv.profile(h))
        .and_then(|p| p.cmdline.clone())
        .unwrap_or_default();
    let image_cmdline = image.map(|i| i.cmdline.as_str()).unwrap_or_default();
    let cmdline = format!("{image_cmdline} {profile_cmdline}")
        .trim()
        .to_string();
    let ctx = ScriptContext {
        base_url,
        mac: mac.to_string(),
        host: host.map(|h| h.name.as_str()),
        ip: host.and_then(|h| inv.provisioning_ip(h)),
        kernel_url: image.map(|i| format!("{base_url}/images/{}", i.kernel)),
        initrd_url: image.map(|i| format!("{base_url}/images/{}", i.initrd)),
        initrd_name: image.and_then(|i| {
            Path::new(&i.initrd)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        }),
        cmdline,
        token,
        phone_home_url: format!("{base_url}/api/v1/hosts/{mac}/events"),
        reason: match plan {
            Plan::Broken { reason } => Some(reason.clone()),
            _ => None,
        },
    };
    match assets.compiled.get_template(plan.template()) {
        Ok(t) => t.render(minijinja::value::Serde(&ctx)),
        Err(e) if e.kind() == minijinja::ErrorKind::TemplateNotFound => {
            Ok("#!ipxe\necho bootgate: template missing\nexit\n".to_string())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod golden {
    //! Every shipped template rendered with fixed inputs and compared whole with the files
    //! in `tests/golden/ipxe/` (run with `BOOTGATE_BLESS=1` to rewrite them after an
    //! intended change, then review the diff).
    use std::collections::BTreeMap;

    use super::*;
    use crate::inventory::{Hardware, Site};
    use crate::types::Role;

    fn fixture() -> (BootAssets, Inventory) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("boot-images");
        let assets = load(&dir).expect("shipped boot-images load");
        let profile = Profile {
            name: "lab-debian".into(),
            description: None,
            image: Some("lab-debian".into()),
            template: "install".into(),
            cmdline: Some("bootgate.after=poweroff".into()),
            boot_file: None,
        };
        let host = Host {
            name: "vm0".into(),
            role: Role::Gpu,
            rack: None,
            position: None,
            macs: vec!["52:54:00:d7:8e:1d".parse().unwrap()],
            addresses: BTreeMap::new(),
            bmc: None,
            hardware: Hardware::default(),
            profile: Some("lab-debian".into()),
            labels: BTreeMap::new(),
            boot_file: None,
        };
        let inv = Inventory {
            site: Site {
                name: "lab".into(),
                description: None,
                location: None,
                gateways: vec![],
                settings: Default::default(),
                bmc_ca_file: None,
            },
            subnets: vec![],
            racks: vec![],
            profiles: vec![profile],
            hosts: vec![host],
            files: vec![],
        };
        (assets, inv)
    }

    fn golden_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ipxe")
    }

    /// Whether `BOOTGATE_BLESS` asks to rewrite the golden files; never under CI (the same
    /// rules as tests/support/golden.rs, which this crate's unit tests cannot reach).
    fn blessing() -> bool {
        let bless = std::env::var_os("BOOTGATE_BLESS").is_some();
        let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
        assert!(
            !(bless && ci),
            "BOOTGATE_BLESS rewrites golden files: refused under CI (bless locally, review the \
             diff, commit it)"
        );
        bless
    }

    fn check(name: &str, got: &str) {
        let path = golden_dir().join(format!("{name}.ipxe"));
        if blessing() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, got).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with BOOTGATE_BLESS=1)", path.display()));
        assert_eq!(got, want, "{name} differs from {}", path.display());
    }

    /// Fails on a golden file none of `rendered` (names without `.ipxe`) produced; blessing,
    /// deletes it instead.
    fn no_stale_golden_files(rendered: &[&str]) {
        let mut stale = Vec::new();
        for entry in std::fs::read_dir(golden_dir()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let known = name
                .strip_suffix(".ipxe")
                .is_some_and(|n| rendered.contains(&n));
            if !known {
                stale.push(path);
            }
        }
        if blessing() {
            for path in &stale {
                if path.is_dir() {
                    std::fs::remove_dir_all(path).unwrap();
                } else {
                    std::fs::remove_file(path).unwrap();
                }
            }
            return;
        }
        assert!(
            stale.is_empty(),
            "golden files no test renders any more (delete them, or BOOTGATE_BLESS=1 does): \
             {stale:?}"
        );
    }

    #[test]
    fn every_template_renders_as_the_golden_file() {
        let (assets, inv) = fixture();
        let host = &inv.hosts[0];
        let mac = host.macs[0];
        let base = "http://10.250.0.1:8080";
        let image = assets.image("lab-debian").unwrap();
        let cases = [
            (
                "install",
                Plan::Install { image },
                Some(host),
                Some("0123456789abcdef0123456789abcdef"),
            ),
            ("local", Plan::Local, Some(host), None),
            (
                "broken",
                Plan::Broken {
                    reason: "the host has no boot profile".into(),
                },
                Some(host),
                None,
            ),
            (
                "rescue",
                Plan::Rescue { image: Some(image) },
                Some(host),
                Some("fedcba9876543210fedcba9876543210"),
            ),
            (
                "rescue-without-image",
                Plan::Rescue { image: None },
                Some(host),
                None,
            ),
            ("discovery", Plan::Discovery, None, None),
        ];
        let mut rendered = Vec::new();
        for (name, plan, h, token) in cases {
            let text = render(&assets, &plan, base, mac, h, &inv, token).unwrap();
            check(name, &text);
            rendered.push(name);
        }
        no_stale_golden_files(&rendered);
    }

    #[test]
    fn plans_follow_the_host_state() {
        let (assets, inv) = fixture();
        let p = &inv.profiles[0];
        assert!(matches!(
            plan(HostState::Registered, Some(p), &assets),
            Plan::Install { .. }
        ));
        assert!(matches!(
            plan(HostState::Failed, Some(p), &assets),
            Plan::Install { .. }
        ));
        assert_eq!(plan(HostState::Ready, Some(p), &assets), Plan::Local);
        assert_eq!(plan(HostState::Discovered, None, &assets), Plan::Discovery);
        assert!(matches!(
            plan(HostState::Maintenance, Some(p), &assets),
            Plan::Rescue { image: Some(_) }
        ));
        assert!(matches!(
            plan(HostState::Registered, None, &assets),
            Plan::Broken { .. }
        ));
        let mut missing = p.clone();
        missing.image = Some("nope".into());
        match plan(HostState::Registered, Some(&missing), &assets) {
            Plan::Broken { reason } => assert!(reason.contains("nope"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
