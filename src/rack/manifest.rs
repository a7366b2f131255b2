//! Rack manifests: what a vendor delivers with a rack (serial, boot MAC, BMC MAC, position
//! per node), as a TOML file or a CSV delivery sheet. Parsed into typed values with every
//! problem located by file, line and field, so an operator can fix the sheet, not the code.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::inventory::{BmcProtocol, BmcScheme, BmcVendor, Switch};
use crate::types::{MacAddr, Role};

/// The default host name pattern (`lab-r2-n01`).
pub const DEFAULT_NAME_PATTERN: &str = "{rack}-n{position:02}";

/// A parsed, self-consistent manifest (no duplicate positions, MACs, serials or names).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    /// The file given on the command line.
    pub file: PathBuf,
    pub rack: RackSpec,
    pub nodes: Vec<Node>,
}

/// The `[rack]` table (or the CSV flags): defaults for every node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RackSpec {
    pub name: String,
    pub location: Option<String>,
    pub role: Role,
    pub profile: Option<String>,
    pub name_pattern: String,
    /// Defaults for every node's BMC; `None` when the rack's nodes get no BMC entry
    /// unless a node names one.
    pub bmc: Option<BmcDefaults>,
    pub switch: Option<Switch>,
    /// First address to hand out per subnet name (default: the subnet's first free one).
    pub addressing: BTreeMap<String, Ipv4Addr>,
    /// Where the `[rack]` table (or `--rack` flag) is, for conflict messages.
    pub origin: Origin,
}

/// `[rack.bmc]`: the fields of an inventory host's `bmc` that are the same for a whole rack.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BmcDefaults {
    pub vendor: Option<BmcVendor>,
    pub protocol: Option<BmcProtocol>,
    pub credential: Option<String>,
    pub scheme: Option<BmcScheme>,
    pub port: Option<u16>,
    pub system: Option<String>,
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure: bool,
}

/// One node of the rack as the manifest describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub origin: Origin,
    pub position: u32,
    pub serial: Option<String>,
    pub boot_mac: Option<MacAddr>,
    pub bmc_mac: Option<MacAddr>,
    pub name: Option<String>,
    pub role: Option<Role>,
    pub profile: Option<String>,
    pub bmc_address: Option<Ipv4Addr>,
    pub bmc_port: Option<u16>,
    pub bmc_system: Option<String>,
    /// Fixed addresses per subnet name.
    pub addresses: BTreeMap<String, Ipv4Addr>,
}

/// Where something in a manifest is: file and 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: PathBuf,
    /// 1-based; 0 when the thing came from the command line.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{} (command line)", self.file.display())
        } else {
            write!(f, "{}:{}", self.file.display(), self.line)
        }
    }
}

/// One thing wrong with a manifest: `file:line: field: reason`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestProblem {
    pub file: PathBuf,
    /// 1-based line; 0 for the whole file or the command line.
    pub line: usize,
    /// The field or CSV column (with its 1-based column number for CSV), or `-`.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ManifestProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.field,
                self.reason
            )
        } else {
            write!(
                f,
                "{}: line {}: {}: {}",
                self.file.display(),
                self.line,
                self.field,
                self.reason
            )
        }
    }
}

/// A manifest that failed to parse: every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} manifest problem(s):\n{}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ManifestError(pub Vec<ManifestProblem>);

/// What the command line gives for a CSV manifest (a TOML manifest's `[rack]` gives it
/// instead).
#[derive(Debug, Clone, Default)]
pub struct CsvRackArgs {
    pub rack: Option<String>,
    pub location: Option<String>,
    pub role: Option<Role>,
    pub profile: Option<String>,
    pub name_pattern: Option<String>,
    pub bmc: Option<BmcDefaults>,
    pub addressing: BTreeMap<String, Ipv4Addr>,
}

/// Reads a manifest: `*.csv` is a vendor delivery sheet (rack defaults from `args`),
/// anything else a TOML manifest.
pub fn read(path: &Path, args: &CsvRackArgs) -> Result<Manifest, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ManifestError(vec![ManifestProblem {
            file: path.to_path_buf(),
            line: 0,
            field: "-".into(),
            reason: format!("cannot read: {e}"),
        }])
    })?;
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        parse_csv_manifest(path, &text, args)
    } else {
        parse_toml(path, &text, &|p| std::fs::read_to_string(p))
    }
}

// ---- TOML ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestWire {
    rack: toml::Spanned<RackWire>,
    #[serde(default)]
    node: Vec<toml::Spanned<NodeWire>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RackWire {
    name: String,
    location: Option<String>,
    role: Option<Role>,
    profile: Option<String>,
    name_pattern: Option<String>,
    nodes_csv: Option<PathBuf>,
    bmc: Option<BmcDefaults>,
    switch: Option<SwitchWire>,
    #[serde(default)]
    addressing: BTreeMap<String, Ipv4Addr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchWire {
    name: String,
    remote_id: Option<String>,
    #[serde(default)]
    ports: BTreeMap<String, u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeWire {
    position: u32,
    serial: Option<String>,
    boot_mac: Option<MacAddr>,
    bmc_mac: Option<MacAddr>,
    name: Option<String>,
    role: Option<Role>,
    profile: Option<String>,
    bmc_address: Option<Ipv4Addr>,
    bmc_port: Option<u16>,
    bmc_system: Option<String>,
    #[serde(default)]
    addresses: BTreeMap<String, Ipv4Addr>,
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Parses a TOML manifest; `read_csv` reads a `nodes_csv` file (a seam for tests).
pub fn parse_toml(
    path: &Path,
    text: &str,
    read_csv: &dyn Fn(&Path) -> std::io::Result<String>,
) -> Result<Manifest, ManifestError> {
    let problem = |line, field: &str, reason: String| ManifestProblem {
        file: path.to_path_buf(),
        line,
        field: field.to_string(),
        reason,
    };
    let wire: ManifestWire = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| line_of(text, s.start));
        ManifestError(vec![problem(line, "-", e.message().trim().to_string())])
    })?;
    let rack_line = line_of(text, wire.rack.span().start);
    let rack = wire.rack.into_inner();
    let origin = Origin {
        file: path.to_path_buf(),
        line: rack_line,
    };
    let mut problems = Vec::new();
    let mut nodes: Vec<Node> = wire
        .node
        .into_iter()
        .map(|n| {
            let line = line_of(text, n.span().start);
            let n = n.into_inner();
            Node {
                origin: Origin {
                    file: path.to_path_buf(),
                    line,
                },
                position: n.position,
                serial: n.serial,
                boot_mac: n.boot_mac,
                bmc_mac: n.bmc_mac,
                name: n.name,
                role: n.role,
                profile: n.profile,
                bmc_address: n.bmc_address,
                bmc_port: n.bmc_port,
                bmc_system: n.bmc_system,
                addresses: n.addresses,
            }
        })
        .collect();
    if let Some(csv) = &rack.nodes_csv {
        let csv_path = path.parent().unwrap_or(Path::new(".")).join(csv);
        match read_csv(&csv_path) {
            Ok(csv_text) => match parse_csv_nodes(&csv_path, &csv_text) {
                Ok(more) => nodes.extend(more),
                Err(ManifestError(p)) => problems.extend(p),
            },
            Err(e) => problems.push(problem(
                rack_line,
                "rack.nodes_csv",
                format!("cannot read {}: {e}", csv_path.display()),
            )),
        }
    }
    let spec = RackSpec {
        name: rack.name,
        location: rack.location,
        role: rack.role.unwrap_or(Role::Gpu),
        profile: rack.profile,
        name_pattern: rack
            .name_pattern
            .unwrap_or_else(|| DEFAULT_NAME_PATTERN.to_string()),
        bmc: rack.bmc,
        switch: rack.switch.map(|s| Switch {
            name: s.name,
            remote_id: s.remote_id,
            ports: s.ports,
        }),
        addressing: rack.addressing,
        origin,
    };
    finish(path, spec, nodes, problems)
}

/// Checks what holds across nodes and the rack, then builds the manifest.
fn finish(
    path: &Path,
    rack: RackSpec,
    nodes: Vec<Node>,
    mut problems: Vec<ManifestProblem>,
) -> Result<Manifest, ManifestError> {
    let at = |o: &Origin, field: &str, reason: String| ManifestProblem {
        file: o.file.clone(),
        line: o.line,
        field: field.to_string(),
        reason,
    };
    if let Err(why) = check_pattern(&rack.name_pattern) {
        problems.push(at(&rack.origin, "rack.name_pattern", why.to_string()));
    }
    if nodes.is_empty() && problems.is_empty() {
        problems.push(at(
            &rack.origin,
            "node",
            "no nodes: add [[node]] entries or rack.nodes_csv".into(),
        ));
    }
    // Duplicates inside the manifest: name the first place each value was seen.
    let mut positions: HashMap<u32, &Origin> = HashMap::new();
    let mut macs: HashMap<MacAddr, (&Origin, &str)> = HashMap::new();
    let mut serials: HashMap<&str, &Origin> = HashMap::new();
    let mut names: HashMap<&str, &Origin> = HashMap::new();
    for n in &nodes {
        if n.position == 0 {
            problems.push(at(&n.origin, "position", "positions start at 1".into()));
        }
        if let Some(first) = positions.insert(n.position, &n.origin) {
            problems.push(at(
                &n.origin,
                "position",
                format!("position {} is also at {first}", n.position),
            ));
        }
        for (field, mac) in [("boot_mac", n.boot_mac), ("bmc_mac", n.bmc_mac)] {
            if let Some(mac) = mac
                && let Some((first, first_field)) = macs.insert(mac, (&n.origin, field))
            {
                problems.push(at(
                    &n.origin,
                    field,
                    format!("MAC {mac} is also the {first_field} at {first}"),
                ));
            }
        }
        if let Some(s) = n.serial.as_deref()
            && let Some(first) = serials.insert(s, &n.origin)
        {
            problems.push(at(
                &n.origin,
                "serial",
                format!("serial {s:?} is also at {first}"),
            ));
        }
        if let Some(s) = n.name.as_deref()
            && let Some(first) = names.insert(s, &n.origin)
        {
            problems.push(at(
                &n.origin,
                "name",
                format!("name {s:?} is also at {first}"),
            ));
        }
    }
    if problems.is_empty() {
        Ok(Manifest {
            file: path.to_path_buf(),
            rack,
            nodes,
        })
    } else {
        Err(ManifestError(problems))
    }
}

/// Why a name pattern cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("unclosed '{{' in {pattern:?}")]
    Unclosed { pattern: String },
    #[error(
        "unknown token {{{token}}} in {pattern:?}; expected {{rack}}, {{position}}, {{position:02}} or {{serial}}"
    )]
    UnknownToken { token: String, pattern: String },
}

/// Refuses a name pattern with an unknown `{token}`.
fn check_pattern(pattern: &str) -> Result<(), PatternError> {
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return Err(PatternError::Unclosed {
                pattern: pattern.to_string(),
            });
        };
        let token = &rest[open + 1..open + close];
        if !matches!(token, "rack" | "position" | "serial") && parse_width(token).is_none() {
            return Err(PatternError::UnknownToken {
                token: token.to_string(),
                pattern: pattern.to_string(),
            });
        }
        rest = &rest[open + close + 1..];
    }
    Ok(())
}

/// `position:NN` → NN.
fn parse_width(token: &str) -> Option<usize> {
    let w = token.strip_prefix("position:")?;
    (w.starts_with('0') && w.len() >= 2)
        .then(|| w.parse().ok())
        .flatten()
}

/// Expands a name pattern for one node (`{serial}` is empty when the node has none).
pub fn expand_name(pattern: &str, rack: &str, node: &Node) -> String {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let token = &rest[open + 1..open + close];
        match token {
            "rack" => out.push_str(rack),
            "position" => out.push_str(&node.position.to_string()),
            "serial" => out.push_str(&node.serial.as_deref().unwrap_or("").to_lowercase()),
            t => {
                let width = parse_width(t).unwrap_or(0);
                out.push_str(&format!("{:0width$}", node.position));
            }
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

// ---- CSV ----

/// The columns a delivery sheet may have, and the header spellings vendors use for them.
const COLUMNS: &[(&str, &[&str])] = &[
    ("serial", &["serial", "serial_number", "sn"]),
    ("boot_mac", &["boot_mac", "mac", "pxe_mac"]),
    ("bmc_mac", &["bmc_mac"]),
    ("position", &["position", "u", "slot"]),
    ("name", &["name"]),
    ("bmc_address", &["bmc_address"]),
    ("bmc_port", &["bmc_port"]),
    ("bmc_system", &["bmc_system"]),
];

fn canonical_column(header: &str) -> Option<&'static str> {
    let h = header.trim().to_ascii_lowercase().replace([' ', '-'], "_");
    COLUMNS
        .iter()
        .find(|(_, names)| names.contains(&h.as_str()))
        .map(|(c, _)| *c)
}

/// A CSV row as text; each field is parsed on its own so a bad cell names its column.
#[derive(Debug, Deserialize)]
struct CsvRow {
    serial: Option<String>,
    boot_mac: Option<String>,
    bmc_mac: Option<String>,
    position: Option<String>,
    name: Option<String>,
    bmc_address: Option<String>,
    bmc_port: Option<String>,
    bmc_system: Option<String>,
}

/// A CSV delivery sheet with the rack defaults from the command line.
pub fn parse_csv_manifest(
    path: &Path,
    text: &str,
    args: &CsvRackArgs,
) -> Result<Manifest, ManifestError> {
    let origin = Origin {
        file: path.to_path_buf(),
        line: 0,
    };
    let mut problems = Vec::new();
    let name = match &args.rack {
        Some(n) => n.clone(),
        None => {
            problems.push(ManifestProblem {
                file: path.to_path_buf(),
                line: 0,
                field: "--rack".into(),
                reason: "a CSV manifest needs --rack NAME (a TOML manifest names it in [rack])"
                    .into(),
            });
            String::new()
        }
    };
    let nodes = match parse_csv_nodes(path, text) {
        Ok(n) => n,
        Err(ManifestError(p)) => {
            problems.extend(p);
            Vec::new()
        }
    };
    let rack = RackSpec {
        name,
        location: args.location.clone(),
        role: args.role.unwrap_or(Role::Gpu),
        profile: args.profile.clone(),
        name_pattern: args
            .name_pattern
            .clone()
            .unwrap_or_else(|| DEFAULT_NAME_PATTERN.to_string()),
        bmc: args.bmc.clone(),
        switch: None,
        addressing: args.addressing.clone(),
        origin,
    };
    finish(path, rack, nodes, problems)
}

/// The nodes of a delivery sheet: a header row (any case, vendor synonyms), then one node
/// per row. Lines are the file's own 1-based line numbers (the header is line 1).
pub fn parse_csv_nodes(path: &Path, text: &str) -> Result<Vec<Node>, ManifestError> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let headers = rdr
        .headers()
        .map_err(|e| ManifestError(vec![csv_problem(path, 1, "-".into(), e.to_string())]))?
        .clone();
    // The csv crate's line counter skips blank lines; byte offsets do not lie.
    let header_line = text
        .lines()
        .position(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map_or(1, |i| i + 1);
    let cols = CsvColumns::from_header(path, &headers, header_line).map_err(ManifestError)?;
    let mut problems = Vec::new();
    let mut nodes = Vec::new();
    for record in rdr.records() {
        match cols.node(path, text, record) {
            Ok(Some(n)) => nodes.push(n),
            Ok(None) => {}
            Err(p) => problems.extend(p),
        }
    }
    if problems.is_empty() {
        Ok(nodes)
    } else {
        Err(ManifestError(problems))
    }
}

fn csv_problem(path: &Path, line: usize, field: String, reason: String) -> ManifestProblem {
    ManifestProblem {
        file: path.to_path_buf(),
        line,
        field,
        reason,
    }
}

/// A sheet's header row, understood.
struct CsvColumns {
    /// The canonical column name per column (empty for an unknown one): the header
    /// [`CsvRow`] is deserialized with.
    canon: csv::StringRecord,
    /// Column label for messages: the header as written, with its 1-based number.
    label: HashMap<&'static str, String>,
}

impl CsvColumns {
    /// Every problem of the header row at once: unknown or repeated columns, a required
    /// column missing.
    fn from_header(
        path: &Path,
        headers: &csv::StringRecord,
        header_line: usize,
    ) -> Result<CsvColumns, Vec<ManifestProblem>> {
        let problem = |field: String, reason: String| csv_problem(path, header_line, field, reason);
        let mut problems = Vec::new();
        let mut canon = csv::StringRecord::new();
        let mut label: HashMap<&'static str, String> = HashMap::new();
        let mut seen: HashMap<&'static str, usize> = HashMap::new();
        for (i, h) in headers.iter().enumerate() {
            match canonical_column(h) {
                Some(c) => {
                    if let Some(first) = seen.insert(c, i + 1) {
                        problems.push(problem(
                            format!("column {} ({h})", i + 1),
                            format!("column {c} is also column {first}"),
                        ));
                    }
                    label.insert(c, format!("column {} ({h})", i + 1));
                    canon.push_field(c);
                }
                None => {
                    problems.push(problem(
                        format!("column {} ({h})", i + 1),
                        format!(
                            "unknown column {h:?}; expected serial, boot_mac (or mac, pxe_mac), bmc_mac, position (or u, slot), name, bmc_address, bmc_port, bmc_system"
                        ),
                    ));
                    canon.push_field("");
                }
            }
        }
        for required in ["boot_mac", "position"] {
            if !seen.contains_key(required) {
                problems.push(problem(
                    "-".into(),
                    format!("no {required} column in the header row"),
                ));
            }
        }
        if problems.is_empty() {
            Ok(CsvColumns { canon, label })
        } else {
            Err(problems)
        }
    }

    fn label(&self, c: &'static str) -> String {
        self.label.get(c).cloned().unwrap_or_else(|| c.to_string())
    }

    /// One row's node (`None` for a blank row), or every problem of the row.
    fn node(
        &self,
        path: &Path,
        text: &str,
        record: csv::Result<csv::StringRecord>,
    ) -> Result<Option<Node>, Vec<ManifestProblem>> {
        let problem = |line: usize, field: String, reason: String| {
            vec![csv_problem(path, line, field, reason)]
        };
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e
                    .position()
                    .map_or(0, |p| record_line(text, p.byte() as usize));
                return Err(problem(line, "-".into(), e.to_string()));
            }
        };
        let line = record
            .position()
            .map_or(0, |p| record_line(text, p.byte() as usize));
        if record.iter().all(|f| f.is_empty()) {
            return Ok(None);
        }
        let row: CsvRow = record
            .deserialize(Some(&self.canon))
            .map_err(|e| problem(line, "-".into(), e.to_string()))?;
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        let serial = nonempty(row.serial);
        let name = nonempty(row.name);
        let bmc_system = nonempty(row.bmc_system);
        let typed = |c: &'static str, v: Option<String>| (c, v.filter(|s| !s.is_empty()));
        let mut errs = Vec::new();
        let boot_mac = typed_field::<MacAddr>(typed("boot_mac", row.boot_mac), &mut errs);
        let bmc_mac = typed_field::<MacAddr>(typed("bmc_mac", row.bmc_mac), &mut errs);
        let bmc_address = typed_field::<Ipv4Addr>(typed("bmc_address", row.bmc_address), &mut errs);
        let bmc_port = typed_field::<u16>(typed("bmc_port", row.bmc_port), &mut errs);
        let position = match typed("position", row.position) {
            (_, None) => {
                errs.push((
                    "position",
                    "empty: every node needs its rack position".into(),
                ));
                None
            }
            (c, v) => typed_field::<u32>((c, v), &mut errs),
        };
        if !errs.is_empty() {
            return Err(errs
                .into_iter()
                .map(|(c, reason)| csv_problem(path, line, self.label(c), reason))
                .collect());
        }
        Ok(Some(Node {
            origin: Origin {
                file: path.to_path_buf(),
                line,
            },
            position: position.unwrap_or(0),
            serial,
            boot_mac,
            bmc_mac,
            name,
            role: None,
            profile: None,
            bmc_address,
            bmc_port,
            bmc_system,
            addresses: BTreeMap::new(),
        }))
    }
}

/// The 1-based line a CSV record starts on. The csv crate reports the offset where it
/// began looking, before the blank and comment lines it skips.
fn record_line(text: &str, mut offset: usize) -> usize {
    while offset < text.len() {
        let rest = &text[offset..];
        let end = rest.find('\n').map_or(rest.len(), |i| i + 1);
        let line = rest[..end].trim();
        if !line.is_empty() && !line.starts_with('#') {
            break;
        }
        offset += end;
    }
    line_of(text, offset)
}

/// Parses one optional CSV cell, noting why it is not a `T`.
fn typed_field<T: std::str::FromStr>(
    (column, value): (&'static str, Option<String>),
    errs: &mut Vec<(&'static str, String)>,
) -> Option<T>
where
    T::Err: fmt::Display,
{
    let v = value?;
    match v.parse::<T>() {
        Ok(t) => Some(t),
        Err(e) => {
            errs.push((column, format!("{v:?}: {e}")));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_csv(_: &Path) -> std::io::Result<String> {
        Err(std::io::Error::other("no csv in this test"))
    }

    const TOML: &str = r#"
[rack]
name = "lab-r2"
role = "gpu"
profile = "lab-debian"

[rack.bmc]
vendor = "generic"
credential = "lab"
scheme = "http"
port = 8000

[rack.addressing]
provisioning = "10.250.0.20"

[[node]]
position = 1
serial = "SN001"
boot_mac = "52:54:00:00:00:01"

[[node]]
position = 2
serial = "SN002"
boot_mac = "52:54:00:00:00:02"
bmc_mac = "52:54:00:00:01:02"
name = "special"
"#;

    #[test]
    fn toml_manifest_parses_with_lines() {
        let m = parse_toml(Path::new("m.toml"), TOML, &no_csv).unwrap();
        assert_eq!(m.rack.name, "lab-r2");
        assert_eq!(m.rack.origin.line, 2);
        assert_eq!(m.nodes.len(), 2);
        assert_eq!(m.nodes[0].origin.line, 16);
        assert_eq!(m.nodes[1].origin.line, 21);
        assert_eq!(m.nodes[1].name.as_deref(), Some("special"));
        assert_eq!(
            m.rack.addressing["provisioning"],
            Ipv4Addr::new(10, 250, 0, 20)
        );
        assert_eq!(m.rack.bmc.as_ref().unwrap().port, Some(8000));
    }

    #[test]
    fn toml_duplicates_are_refused_naming_both_lines() {
        let text = TOML.replace("52:54:00:00:00:02", "52:54:00:00:00:01");
        let e = parse_toml(Path::new("m.toml"), &text, &no_csv).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].line, 21);
        assert_eq!(e.0[0].field, "boot_mac");
        assert!(e.0[0].reason.contains("m.toml:16"), "{e}");
        let text = TOML.replace("position = 2", "position = 1");
        let e = parse_toml(Path::new("m.toml"), &text, &no_csv).unwrap_err();
        assert!(
            e.to_string().contains("position 1 is also at m.toml:16"),
            "{e}"
        );
    }

    #[test]
    fn toml_errors_name_the_line() {
        let text = TOML.replace("\"52:54:00:00:00:02\"", "\"52:54:00:00:00\"");
        let e = parse_toml(Path::new("m.toml"), &text, &no_csv).unwrap_err();
        assert_eq!(e.0[0].line, 24, "{e}");
        assert!(e.0[0].reason.contains("invalid MAC"), "{e}");
        let text = TOML.replace("serial = \"SN001\"", "colour = \"red\"");
        let e = parse_toml(Path::new("m.toml"), &text, &no_csv).unwrap_err();
        assert_eq!(e.0[0].line, 18, "{e}");
        assert!(e.0[0].reason.contains("colour"), "{e}");
    }

    #[test]
    fn toml_pulls_nodes_from_its_csv() {
        let text = TOML.replace(
            "profile = \"lab-debian\"",
            "profile = \"lab-debian\"\nnodes_csv = \"r.csv\"",
        );
        let csv = |p: &Path| {
            assert_eq!(p, Path::new("dir/r.csv"));
            Ok("Serial,MAC,U\nSN003,52:54:00:00:00:03,3\n".to_string())
        };
        let m = parse_toml(Path::new("dir/m.toml"), &text, &csv).unwrap();
        assert_eq!(m.nodes.len(), 3);
        assert_eq!(m.nodes[2].origin.file, Path::new("dir/r.csv"));
        assert_eq!(m.nodes[2].origin.line, 2);
    }

    fn args() -> CsvRackArgs {
        CsvRackArgs {
            rack: Some("r05".into()),
            ..Default::default()
        }
    }

    #[test]
    fn csv_headers_are_case_insensitive_with_synonyms() {
        let text = "SERIAL, PXE_MAC ,BMC_MAC,Slot,Name\n\
                    SN1,52-54-00-AA-00-01,52:54:00:bb:00:01,1,\n\
                    \n\
                    SN2,52:54:00:aa:00:02,,2,odd-one\n";
        let m = parse_csv_manifest(Path::new("r.csv"), text, &args()).unwrap();
        assert_eq!(m.nodes.len(), 2);
        assert_eq!(
            m.nodes[0].boot_mac,
            Some("52:54:00:aa:00:01".parse().unwrap())
        );
        assert_eq!(m.nodes[0].name, None);
        assert_eq!(m.nodes[1].origin.line, 4);
        assert_eq!(m.nodes[1].bmc_mac, None);
        assert_eq!(m.nodes[1].name.as_deref(), Some("odd-one"));
    }

    #[test]
    fn csv_errors_name_line_and_column() {
        let text = "serial,boot_mac,position\nSN1,52:54:00:aa:00:01,1\nSN2,52:54:00:zz:00:02,x\n";
        let e = parse_csv_manifest(Path::new("r.csv"), text, &args()).unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        let s = e.to_string();
        assert!(
            s.contains("r.csv: line 3: column 2 (boot_mac): \"52:54:00:zz:00:02\""),
            "{s}"
        );
        assert!(
            s.contains("r.csv: line 3: column 3 (position): \"x\""),
            "{s}"
        );

        let e = parse_csv_manifest(Path::new("r.csv"), "serial,mac,colour\n", &args()).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("line 1: column 3 (colour): unknown column"),
            "{s}"
        );
        assert!(s.contains("no position column"), "{s}");

        let dup = "serial,mac,u\nSN1,52:54:00:aa:00:01,1\nSN1,52:54:00:aa:00:02,1\n";
        let s = parse_csv_manifest(Path::new("r.csv"), dup, &args())
            .unwrap_err()
            .to_string();
        assert!(
            s.contains("line 3: position: position 1 is also at r.csv:2"),
            "{s}"
        );
        assert!(
            s.contains("line 3: serial: serial \"SN1\" is also at r.csv:2"),
            "{s}"
        );

        let ragged = "serial,mac,u\nSN1,52:54:00:aa:00:01\n";
        let s = parse_csv_manifest(Path::new("r.csv"), ragged, &args())
            .unwrap_err()
            .to_string();
        assert!(s.contains("line 2"), "{s}");
    }

    #[test]
    fn csv_needs_a_rack_name() {
        let text = "mac,u\n52:54:00:aa:00:01,1\n";
        let e = parse_csv_manifest(Path::new("r.csv"), text, &CsvRackArgs::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--rack"), "{e}");
    }

    #[test]
    fn name_patterns_expand() {
        let node = |position, serial: Option<&str>| Node {
            origin: Origin {
                file: "x".into(),
                line: 1,
            },
            position,
            serial: serial.map(String::from),
            boot_mac: None,
            bmc_mac: None,
            name: None,
            role: None,
            profile: None,
            bmc_address: None,
            bmc_port: None,
            bmc_system: None,
            addresses: BTreeMap::new(),
        };
        assert_eq!(
            expand_name(DEFAULT_NAME_PATTERN, "lab-r2", &node(3, None)),
            "lab-r2-n03"
        );
        assert_eq!(
            expand_name("gpu-{rack}-{position:03}", "r05", &node(12, None)),
            "gpu-r05-012"
        );
        assert_eq!(
            expand_name("n{position}-{serial}", "r", &node(4, Some("SN9"))),
            "n4-sn9"
        );
        assert!(check_pattern("{rack}-{pos}").is_err());
        assert!(check_pattern("{rack").is_err());
        assert!(check_pattern("{rack}-{position:02}-{serial}").is_ok());
    }
}
