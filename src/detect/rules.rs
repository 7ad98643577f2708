//! Composition rules (LogSAD paper eq. 4): declarative checks on a frame's part layout (how many
//! instances of a part, how large, where, which classes go together) whose violation makes a
//! frame a logical anomaly. The composition score is 1 when any rule fires and 0 otherwise; what
//! the authors' code checks per MVTec LOCO category is listed in
//! `shared/docs/reference-implementation.md`, "Composition rules".
//!
//! Text-free mode: parts are k-means clusters of patch features ([`super::parts`]), known by their
//! index and a name (the profile's, e.g. "part3", or one the rule file gives it). Parts that
//! replace each other (a yellow or a blue cable) are different parts; a *class group* lists such
//! alternatives, and a frame's *class* of the group is its present member with the largest area.
//!
//! - [`parse_rules`] reads and validates a rule file (format: `meta/README.md`),
//! - [`evaluate`] checks a frame's [`FrameLayout`] against it and returns the [`FiredRule`]s,
//! - [`learn_rules`] learns the rules that hold on every nominal layout,
//! - [`write_rules`] writes a rule file back as editable JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};

use super::parts::{components, Connectivity, Instance, LabelMap};

/// Every rule kind, as written in a rule's `kind` field.
pub const RULE_KINDS: [&str; 10] = [
    "count",
    "area",
    "pairs",
    "count-by-class",
    "components",
    "balance",
    "crossing",
    "distance",
    "position",
    "co-occurrence",
];

/// A rule file: the category it is for, optional part names and the rules.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Category (product) the rules are for; informative.
    pub category: String,
    /// Names given to part indices in this file (`"pins": 3`): rules may use them besides the
    /// profile's own part names, and messages use them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parts: BTreeMap<String, u16>,
    /// The rules; any one that fires makes the frame a logical anomaly.
    pub rules: Vec<Rule>,
}

/// One composition rule, tagged by `kind` in JSON. Parts are referred to by name; bounds named
/// `equal`/`min`/`max` are inclusive and an absent `min` or `max` is unbounded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Rule {
    Count(CountRule),
    Area(AreaRule),
    Pairs(PairsRule),
    CountByClass(CountByClassRule),
    Components(ComponentsRule),
    Balance(BalanceRule),
    Crossing(CrossingRule),
    Distance(DistanceRule),
    Position(PositionRule),
    CoOccurrence(CoOccurrenceRule),
}

/// Writes a whole number without a fraction (`15`, not `15.0`) so that counts read naturally.
fn number<S: Serializer>(value: &Option<f64>, serializer: S) -> Result<S::Ok, S::Error> {
    match *value {
        Some(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => serializer.serialize_i64(v as i64),
        Some(v) => serializer.serialize_f64(v),
        None => serializer.serialize_none(),
    }
}

/// `count`: the number of instances of `part`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct CountRule {
    /// Shown in messages; default `count(<part>)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub part: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub equal: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub min: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub max: Option<f64>,
}

/// `area`: the part's area in cells over its reference mean ([`ReferenceStats::mean_area`]), or
/// with `per_instance` its area per instance over [`ReferenceStats::mean_instance_area`]
/// (the reference: eroded clamp area per clamp within [0.8, 1.2]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AreaRule {
    /// Default `area(<part>)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub part: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_instance: bool,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub min: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub max: Option<f64>,
}

/// `pairs` (consistency): the classes of two class groups must form one of the `allowed`
/// pairs; `null` in a pair stands for "no member of the group present".
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct PairsRule {
    /// Default `pairs(<first members>, <second members>)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub first: Vec<String>,
    pub second: Vec<String>,
    pub allowed: Vec<[Option<String>; 2]>,
}

/// What [`CountByClassRule`] measures of its part.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Measure {
    /// Number of instances.
    #[default]
    Count,
    /// Area over the reference mean area, as [`AreaRule`].
    Area,
}

/// Bounds for one class in a [`CountByClassRule`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ClassBounds {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub equal: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub min: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub max: Option<f64>,
}

/// `count-by-class`: `part`'s count (or area ratio) allowed per class of the class group
/// `group` (LOCO splicing connectors: a yellow cable goes with 2 clamps, blue 3, red 5). Quiet
/// when the group has no class in the frame or its class has no entry in `classes`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct CountByClassRule {
    /// Default `count-by-class(<part> by <group members>)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub part: String,
    pub group: Vec<String>,
    #[serde(default, skip_serializing_if = "is_count")]
    pub measure: Measure,
    /// Class (a member of `group`) to the bounds of `part`'s measure in frames of that class.
    pub classes: BTreeMap<String, ClassBounds>,
}

fn is_count(measure: &Measure) -> bool {
    *measure == Measure::Count
}

fn eight() -> Connectivity {
    Connectivity::Eight
}

fn is_eight(connectivity: &Connectivity) -> bool {
    *connectivity == Connectivity::Eight
}

fn one() -> usize {
    1
}

fn is_one(value: &usize) -> bool {
    *value == 1
}

/// `components`: the number of connected components of foreground (non-background) cells with
/// at least `min_cells` cells (the reference: exactly 1 for splicing connectors).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ComponentsRule {
    /// Default `components`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "eight", skip_serializing_if = "is_eight")]
    pub connectivity: Connectivity,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub min_cells: usize,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub equal: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub min: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub max: Option<f64>,
}

/// `balance`: foreground cells left of the vertical centre line over those right of it (a
/// centre column of an odd width counts on neither side; the reference: within [0.8, 1.2]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct BalanceRule {
    /// Default `balance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub min: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub max: Option<f64>,
}

/// Orientation of a [`CrossingRule`]'s line.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Line {
    /// A vertical line at `at` x width.
    Vertical,
    /// A horizontal line at `at` x height.
    Horizontal,
}

fn half() -> f64 {
    0.5
}

/// `crossing`: the number of `part`'s instances with a cell on a line at relative position `at`
/// (0..1). On the cell grid the line covers the cells whose extent touches it: two columns (or
/// rows) when it falls on a cell border, as the reference's 2-px strip at the image centre
/// (which must cross exactly 1 cable).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CrossingRule {
    /// Default `crossing(<part>, x=<at>)` or `crossing(<part>, y=<at>)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub part: String,
    pub line: Line,
    #[serde(default = "half")]
    pub at: f64,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub equal: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub min: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub max: Option<f64>,
}

/// `distance`: with exactly 2 instances of `part`, their centroid distance in cells over the
/// reference mean ([`ReferenceStats::mean_distance`]); quiet with any other number (the
/// reference: [0.6, 1.4] for the splicing connectors' two clamps).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct DistanceRule {
    /// Default `distance(<part>)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub part: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub min: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub max: Option<f64>,
}

/// `position`: every instance centroid of `part` lies within `x` and `y` (inclusive ranges;
/// an absent one is unbounded). Coordinates are relative: centroid / (width, height), 0..1;
/// with `relative_to`, offsets from that part's centroid (area-weighted over its instances) in
/// the same units, -1..1, and the rule is quiet when that part is absent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct PositionRule {
    /// Default `position(<part>)` or `position(<part> from <relative_to>)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub part: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<[f64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<[f64; 2]>,
}

/// `co-occurrence`: how many of `parts` are present (have an instance); `equal: 1` over a
/// class group says exactly one alternative appears, `min: 3` over 3 parts that all appear
/// together.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct CoOccurrenceRule {
    /// Default `co-occurrence(<parts>)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub parts: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub equal: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub min: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "number"
    )]
    pub max: Option<f64>,
}

impl Rule {
    /// The rule's `kind` as written in JSON (one of [`RULE_KINDS`]).
    pub fn kind(&self) -> &'static str {
        match self {
            Rule::Count(_) => "count",
            Rule::Area(_) => "area",
            Rule::Pairs(_) => "pairs",
            Rule::CountByClass(_) => "count-by-class",
            Rule::Components(_) => "components",
            Rule::Balance(_) => "balance",
            Rule::Crossing(_) => "crossing",
            Rule::Distance(_) => "distance",
            Rule::Position(_) => "position",
            Rule::CoOccurrence(_) => "co-occurrence",
        }
    }

    /// The rule's `name`, or one derived from its kind and parts (`count(pins)`).
    pub fn name(&self) -> String {
        let given = match self {
            Rule::Count(r) => &r.name,
            Rule::Area(r) => &r.name,
            Rule::Pairs(r) => &r.name,
            Rule::CountByClass(r) => &r.name,
            Rule::Components(r) => &r.name,
            Rule::Balance(r) => &r.name,
            Rule::Crossing(r) => &r.name,
            Rule::Distance(r) => &r.name,
            Rule::Position(r) => &r.name,
            Rule::CoOccurrence(r) => &r.name,
        };
        if let Some(name) = given {
            return name.clone();
        }
        match self {
            Rule::Count(r) => format!("count({})", r.part),
            Rule::Area(r) if r.per_instance => format!("area-per-instance({})", r.part),
            Rule::Area(r) => format!("area({})", r.part),
            Rule::Pairs(r) => format!("pairs({}, {})", r.first.join("|"), r.second.join("|")),
            Rule::CountByClass(r) => {
                let measure = if r.measure == Measure::Area {
                    "area"
                } else {
                    "count"
                };
                format!("{measure}-by-class({} by {})", r.part, r.group.join("|"))
            }
            Rule::Components(_) => "components".to_string(),
            Rule::Balance(_) => "balance".to_string(),
            Rule::Crossing(r) => {
                let axis = if r.line == Line::Vertical { "x" } else { "y" };
                format!("crossing({}, {axis}={})", r.part, r.at)
            }
            Rule::Distance(r) => format!("distance({})", r.part),
            Rule::Position(r) => match &r.relative_to {
                Some(other) => format!("position({} from {other})", r.part),
                None => format!("position({})", r.part),
            },
            Rule::CoOccurrence(r) => format!("co-occurrence({})", r.parts.join("|")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors and parsing
// ---------------------------------------------------------------------------------------------

/// What is wrong in a rule file (see [`RuleError`] for where).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleErrorKind {
    /// Not JSON at all.
    #[error("bad JSON at line {line}, column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    /// serde's own complaint: a missing or unknown field, or a value of the wrong type.
    #[error("{0}")]
    Field(String),
    /// A rule without a `kind` or with a kind this version does not know.
    #[error("unknown rule kind {found}; known kinds: {}", known.join(", "))]
    UnknownKind { found: String, known: Vec<String> },
    /// A part that neither the profile nor the file's `parts` names.
    #[error("unknown part {found:?}; the profile has: {}", known.join(", "))]
    UnknownPart { found: String, known: Vec<String> },
    /// `min` above `max` (or a range `[a, b]` with a > b).
    #[error("bounds out of order: min {min} > max {max}")]
    BoundsOrder { min: f64, max: f64 },
    /// A negative count, ratio or cell size.
    #[error("negative value {0}: counts and ratios are >= 0")]
    Negative(f64),
    /// A count with a fraction.
    #[error("{0} is not a whole number (a count)")]
    NotWhole(f64),
    /// A lower bound (`min` or `equal`) above the most a frame can hold: the rule would fire
    /// on every frame.
    #[error("{value} can never be reached: a frame holds at most {most} ({why})")]
    Unreachable { value: f64, most: u64, why: String },
    /// Anything else, said in words.
    #[error("{0}")]
    Invalid(String),
}

/// A rule file that cannot be used: the file, the JSON path of the offending field (such as
/// `rules[2].max`; empty for the whole document) and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct RuleError {
    pub file: PathBuf,
    pub path: String,
    pub kind: RuleErrorKind,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.kind)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.path, self.kind)
        }
    }
}

/// A validation failure before the file name is attached: (JSON path, what is wrong).
type Invalid = (String, RuleErrorKind);

/// The top level before the rules are checked one by one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    category: String,
    #[serde(default)]
    parts: serde_json::Map<String, serde_json::Value>,
    rules: Vec<serde_json::Value>,
}

/// Joins a JSON path prefix and a serde_path_to_error path (`.` for the root).
fn join(prefix: &str, inner: &str) -> String {
    match (prefix.is_empty(), inner) {
        (_, "." | "") => prefix.to_string(),
        (true, _) => inner.to_string(),
        (false, _) if inner.starts_with('[') => format!("{prefix}{inner}"),
        (false, _) => format!("{prefix}.{inner}"),
    }
}

/// Deserialises `value` as `T`, naming the path of a field serde rejects.
fn from_value<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    prefix: &str,
) -> Result<T, Invalid> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = join(prefix, &e.path().to_string());
        (path, RuleErrorKind::Field(e.into_inner().to_string()))
    })
}

/// Reads and validates a rule file. `source` names the file in errors; `part_names` are the
/// profile's part names by index (besides them, rules may use the names the file's `parts`
/// gives, whose indices must be below `part_names.len()`); `max_instances`, when known, is the
/// most instances of one part a frame can hold ([`crate::detect::parts::PartModel::max_instances`]).
///
/// Errors ([`RuleError`]: file, JSON path, cause): bad JSON (line and column), a missing or
/// unknown field or a wrong type (serde's message), an unknown rule kind (the known ones
/// listed), an unknown part (the known ones listed), a part index out of range, bounds out of
/// order, a negative or fractional count, a negative ratio, no bounds at all, `equal` together
/// with `min`/`max`, an empty group or list, a class that is not in its group, a count that no
/// frame can reach (above `max_instances`, or more parts than a co-occurrence lists).
pub fn parse_rules(
    text: &str,
    source: &Path,
    part_names: &[String],
    max_instances: Option<u64>,
) -> Result<RuleFile, RuleError> {
    let error = |(path, kind): Invalid| RuleError {
        file: source.to_path_buf(),
        path,
        kind,
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        let message = e.to_string();
        // serde_json appends " at line L column C"; the position is given separately.
        let message = match message.rfind(" at line ") {
            Some(at) => message[..at].to_string(),
            None => message,
        };
        error((
            String::new(),
            RuleErrorKind::Json {
                line: e.line(),
                column: e.column(),
                message,
            },
        ))
    })?;
    let raw: RawFile = from_value(value, "").map_err(error)?;
    let parts = parse_renames(&raw.parts, part_names).map_err(error)?;
    let names = Names {
        renames: &parts,
        names: part_names,
        max_instances,
    };
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (i, value) in raw.rules.into_iter().enumerate() {
        let path = format!("rules[{i}]");
        let rule = parse_rule(value, &path).map_err(error)?;
        validate_rule(&rule, &path, &names).map_err(error)?;
        rules.push(rule);
    }
    Ok(RuleFile {
        category: raw.category,
        parts,
        rules,
    })
}

fn parse_renames(
    raw: &serde_json::Map<String, serde_json::Value>,
    part_names: &[String],
) -> Result<BTreeMap<String, u16>, Invalid> {
    let mut parts = BTreeMap::new();
    for (name, value) in raw {
        let path = format!("parts.{name}");
        let index = value.as_u64().filter(|&i| i < part_names.len() as u64);
        let Some(index) = index.and_then(|i| u16::try_from(i).ok()) else {
            return Err((
                path,
                RuleErrorKind::Invalid(format!(
                    "{value} is not a part index: the profile has {} parts, 0..{} ({})",
                    part_names.len(),
                    part_names.len().saturating_sub(1),
                    part_names.join(", ")
                )),
            ));
        };
        if let Some(other) = part_names.iter().position(|n| n == name) {
            if other != usize::from(index) {
                return Err((
                    path,
                    RuleErrorKind::Invalid(format!(
                        "{name:?} is already the profile's name of part {other}"
                    )),
                ));
            }
        }
        if name.is_empty() {
            return Err((path, RuleErrorKind::Invalid("empty part name".into())));
        }
        parts.insert(name.clone(), index);
    }
    Ok(parts)
}

fn parse_rule(value: serde_json::Value, path: &str) -> Result<Rule, Invalid> {
    let known = || RULE_KINDS.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    let serde_json::Value::Object(mut fields) = value else {
        return Err((
            path.to_string(),
            RuleErrorKind::Invalid(format!(
                "a rule is a JSON object with a \"kind\", got {value}"
            )),
        ));
    };
    let kind_path = format!("{path}.kind");
    let kind = match fields.remove("kind") {
        Some(serde_json::Value::String(kind)) => kind,
        Some(other) => {
            return Err((
                kind_path,
                RuleErrorKind::UnknownKind {
                    found: other.to_string(),
                    known: known(),
                },
            ))
        }
        None => {
            return Err((
                kind_path,
                RuleErrorKind::UnknownKind {
                    found: "(missing)".into(),
                    known: known(),
                },
            ))
        }
    };
    let fields = serde_json::Value::Object(fields);
    Ok(match kind.as_str() {
        "count" => Rule::Count(from_value(fields, path)?),
        "area" => Rule::Area(from_value(fields, path)?),
        "pairs" => Rule::Pairs(from_value(fields, path)?),
        "count-by-class" => Rule::CountByClass(from_value(fields, path)?),
        "components" => Rule::Components(from_value(fields, path)?),
        "balance" => Rule::Balance(from_value(fields, path)?),
        "crossing" => Rule::Crossing(from_value(fields, path)?),
        "distance" => Rule::Distance(from_value(fields, path)?),
        "position" => Rule::Position(from_value(fields, path)?),
        "co-occurrence" => Rule::CoOccurrence(from_value(fields, path)?),
        _ => {
            return Err((
                kind_path,
                RuleErrorKind::UnknownKind {
                    found: format!("{kind:?}"),
                    known: known(),
                },
            ))
        }
    })
}

/// Checks `equal`/`min`/`max` at `path`: at least one given, `equal` alone, finite, >= 0,
/// whole for counts, `min <= max`, and `equal`/`min` no more than `most` (the largest value a
/// frame can give, and why) when known.
fn check_bounds(
    path: &str,
    equal: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    whole: bool,
    most: Option<(u64, &str)>,
) -> Result<(), Invalid> {
    if equal.is_none() && min.is_none() && max.is_none() {
        let what = if whole {
            "equal, min or max"
        } else {
            "min or max"
        };
        return Err((
            path.to_string(),
            RuleErrorKind::Invalid(format!("no bounds: give {what}")),
        ));
    }
    if equal.is_some() && (min.is_some() || max.is_some()) {
        return Err((
            format!("{path}.equal"),
            RuleErrorKind::Invalid("give either equal or min/max, not both".into()),
        ));
    }
    for (field, value) in [("equal", equal), ("min", min), ("max", max)] {
        let Some(v) = value else { continue };
        let at = format!("{path}.{field}");
        if !v.is_finite() {
            return Err((
                at,
                RuleErrorKind::Invalid(format!("{v} is not a finite number")),
            ));
        }
        if v < 0.0 {
            return Err((at, RuleErrorKind::Negative(v)));
        }
        if whole && v.fract() != 0.0 {
            return Err((at, RuleErrorKind::NotWhole(v)));
        }
        match most {
            Some((most, why)) if field != "max" && v > most as f64 => {
                let why = why.to_string();
                return Err((
                    at,
                    RuleErrorKind::Unreachable {
                        value: v,
                        most,
                        why,
                    },
                ));
            }
            _ => {}
        }
    }
    if let (Some(lo), Some(hi)) = (min, max) {
        if lo > hi {
            return Err((
                format!("{path}.max"),
                RuleErrorKind::BoundsOrder { min: lo, max: hi },
            ));
        }
    }
    Ok(())
}

/// Checks a relative range `[lo, hi]` at `path`: finite and in order.
fn check_range(path: &str, range: Option<[f64; 2]>) -> Result<(), Invalid> {
    let Some([lo, hi]) = range else { return Ok(()) };
    if !lo.is_finite() || !hi.is_finite() {
        return Err((
            path.to_string(),
            RuleErrorKind::Invalid("range bounds must be finite numbers".into()),
        ));
    }
    if lo > hi {
        return Err((
            format!("{path}[1]"),
            RuleErrorKind::BoundsOrder { min: lo, max: hi },
        ));
    }
    Ok(())
}

/// Checks a list of distinct, known parts at `path`.
fn check_group(path: &str, group: &[String], names: &Names) -> Result<(), Invalid> {
    if group.is_empty() {
        return Err((
            path.to_string(),
            RuleErrorKind::Invalid("empty list of parts".into()),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, part) in group.iter().enumerate() {
        let at = format!("{path}[{i}]");
        names.check(part, &at)?;
        if !seen.insert(names.index(part)) {
            return Err((
                at,
                RuleErrorKind::Invalid(format!("{part:?} is listed twice")),
            ));
        }
    }
    Ok(())
}

fn validate_rule(rule: &Rule, path: &str, names: &Names) -> Result<(), Invalid> {
    let at = |field: &str| format!("{path}.{field}");
    let name = match rule {
        Rule::Count(r) => &r.name,
        Rule::Area(r) => &r.name,
        Rule::Pairs(r) => &r.name,
        Rule::CountByClass(r) => &r.name,
        Rule::Components(r) => &r.name,
        Rule::Balance(r) => &r.name,
        Rule::Crossing(r) => &r.name,
        Rule::Distance(r) => &r.name,
        Rule::Position(r) => &r.name,
        Rule::CoOccurrence(r) => &r.name,
    };
    if name.as_deref().is_some_and(|n| n.trim().is_empty()) {
        return Err((at("name"), RuleErrorKind::Invalid("empty name".into())));
    }
    match rule {
        Rule::Count(r) => {
            names.check(&r.part, &at("part"))?;
            check_bounds(path, r.equal, r.min, r.max, true, names.most_instances())
        }
        Rule::Area(r) => {
            names.check(&r.part, &at("part"))?;
            check_bounds(path, None, r.min, r.max, false, None)
        }
        Rule::Pairs(r) => {
            check_group(&at("first"), &r.first, names)?;
            check_group(&at("second"), &r.second, names)?;
            if r.allowed.is_empty() {
                return Err((
                    at("allowed"),
                    RuleErrorKind::Invalid("no allowed pair: every frame would fire".into()),
                ));
            }
            for (i, pair) in r.allowed.iter().enumerate() {
                for (j, (class, group, group_name)) in [
                    (&pair[0], &r.first, "first"),
                    (&pair[1], &r.second, "second"),
                ]
                .into_iter()
                .enumerate()
                {
                    let Some(class) = class else { continue };
                    let here = format!("{path}.allowed[{i}][{j}]");
                    names.check(class, &here)?;
                    if !group.iter().any(|m| names.index(m) == names.index(class)) {
                        return Err((
                            here,
                            RuleErrorKind::Invalid(format!(
                                "{class:?} is not in {group_name} ({}); null stands for none",
                                group.join(", ")
                            )),
                        ));
                    }
                }
            }
            Ok(())
        }
        Rule::CountByClass(r) => {
            names.check(&r.part, &at("part"))?;
            check_group(&at("group"), &r.group, names)?;
            if r.classes.is_empty() {
                return Err((
                    at("classes"),
                    RuleErrorKind::Invalid("no class given".into()),
                ));
            }
            for (class, bounds) in &r.classes {
                let here = format!("{path}.classes.{class}");
                names.check(class, &here)?;
                if !r.group.iter().any(|m| names.index(m) == names.index(class)) {
                    return Err((
                        here,
                        RuleErrorKind::Invalid(format!(
                            "{class:?} is not in group ({})",
                            r.group.join(", ")
                        )),
                    ));
                }
                if r.measure == Measure::Area && bounds.equal.is_some() {
                    return Err((
                        format!("{here}.equal"),
                        RuleErrorKind::Invalid("an area ratio takes min/max, not equal".into()),
                    ));
                }
                let whole = r.measure == Measure::Count;
                let most = names.most_instances().filter(|_| whole);
                check_bounds(&here, bounds.equal, bounds.min, bounds.max, whole, most)?;
            }
            Ok(())
        }
        Rule::Components(r) => {
            check_bounds(path, r.equal, r.min, r.max, true, names.most_instances())
        }
        Rule::Balance(r) => check_bounds(path, None, r.min, r.max, false, None),
        Rule::Crossing(r) => {
            names.check(&r.part, &at("part"))?;
            if !(0.0..=1.0).contains(&r.at) {
                return Err((
                    at("at"),
                    RuleErrorKind::Invalid(format!("{} is not a relative position in 0..1", r.at)),
                ));
            }
            check_bounds(path, r.equal, r.min, r.max, true, names.most_instances())
        }
        Rule::Distance(r) => {
            names.check(&r.part, &at("part"))?;
            check_bounds(path, None, r.min, r.max, false, None)
        }
        Rule::Position(r) => {
            names.check(&r.part, &at("part"))?;
            if let Some(other) = &r.relative_to {
                names.check(other, &at("relative_to"))?;
                if names.index(other) == names.index(&r.part) {
                    return Err((
                        at("relative_to"),
                        RuleErrorKind::Invalid("a part's position relative to itself".into()),
                    ));
                }
            }
            if r.x.is_none() && r.y.is_none() {
                return Err((
                    path.to_string(),
                    RuleErrorKind::Invalid("no bounds: give x or y".into()),
                ));
            }
            check_range(&at("x"), r.x)?;
            check_range(&at("y"), r.y)
        }
        Rule::CoOccurrence(r) => {
            check_group(&at("parts"), &r.parts, names)?;
            let most = (r.parts.len() as u64, "the parts the rule lists");
            check_bounds(path, r.equal, r.min, r.max, true, Some(most))
        }
    }
}

/// Part names: the file's renames first, then the profile's names by index.
struct Names<'a> {
    renames: &'a BTreeMap<String, u16>,
    names: &'a [String],
    /// The most instances of one part a frame can hold, when known.
    max_instances: Option<u64>,
}

impl Names<'_> {
    fn most_instances(&self) -> Option<(u64, &'static str)> {
        self.max_instances
            .map(|most| (most, "instances of the smallest part area in the label map"))
    }

    fn index(&self, name: &str) -> Option<u16> {
        self.renames.get(name).copied().or_else(|| {
            let i = self.names.iter().position(|n| n == name)?;
            u16::try_from(i).ok()
        })
    }

    fn check(&self, name: &str, path: &str) -> Result<(), Invalid> {
        match self.index(name) {
            Some(_) => Ok(()),
            None => Err((
                path.to_string(),
                RuleErrorKind::UnknownPart {
                    found: name.to_string(),
                    known: self
                        .names
                        .iter()
                        .chain(self.renames.keys())
                        .cloned()
                        .collect(),
                },
            )),
        }
    }

    /// Display name of a part index: a rename, else the profile's name, else `part<i>`.
    fn display(&self, part: u16) -> String {
        if let Some((name, _)) = self.renames.iter().find(|(_, &i)| i == part) {
            return name.clone();
        }
        self.names
            .get(usize::from(part))
            .cloned()
            .unwrap_or_else(|| format!("part{part}"))
    }
}

/// The editable, pretty-printed JSON of a rule file, as `logsad enroll --rules-out` writes it;
/// [`parse_rules`] reads it back to an equal [`RuleFile`].
pub fn write_rules(rules: &RuleFile) -> String {
    let mut text = serde_json::to_string_pretty(rules)
        .expect("a RuleFile has only string map keys and infallible serialisers");
    text.push('\n');
    text
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

/// One frame's part layout, as the part stage produces it.
#[derive(Debug, Clone, Copy)]
pub struct FrameLayout<'a> {
    /// Part label per cell, `labels.width * labels.height` cells.
    pub labels: &'a LabelMap,
    /// Instances (connected components) of every part, on the same grid.
    pub instances: &'a [Instance],
    /// The profile's part names by index.
    pub names: &'a [String],
}

/// Where the object lies in a frame: the centroid of its foreground (every cell not labelled
/// background), relative (0..1), and, when the foreground is elongated (principal second
/// moments in a ratio of at least [`ELONGATED`]), its principal axis in radians, modulo pi.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Pose {
    pub centre: (f64, f64),
    pub axis: Option<f64>,
}

/// Ratio of the foreground's principal second moments from which its axis counts (a rounder
/// foreground's axis turns with noise).
pub const ELONGATED: f64 = 1.5;

/// The [`Pose`] of a label map's foreground; `None` without foreground or for a map whose
/// labels do not fill its size.
pub fn foreground_pose(labels: &LabelMap) -> Option<Pose> {
    let (w, h) = (labels.width, labels.height);
    if w == 0 || w.checked_mul(h) != Some(labels.labels.len()) {
        return None;
    }
    let (mut n, mut sx, mut sy) = (0.0f64, 0.0f64, 0.0f64);
    for (i, &l) in labels.labels.iter().enumerate() {
        if l != labels.background {
            n += 1.0;
            sx += (i % w) as f64 + 0.5;
            sy += (i / w) as f64 + 0.5;
        }
    }
    if n == 0.0 {
        return None;
    }
    let (mx, my) = (sx / n, sy / n);
    let (mut xx, mut yy, mut xy) = (0.0f64, 0.0f64, 0.0f64);
    for (i, &l) in labels.labels.iter().enumerate() {
        if l != labels.background {
            let (dx, dy) = ((i % w) as f64 + 0.5 - mx, (i / w) as f64 + 0.5 - my);
            xx += dx * dx;
            yy += dy * dy;
            xy += dx * dy;
        }
    }
    let half_trace = (xx + yy) / 2.0;
    let root = (((xx - yy) / 2.0).powi(2) + xy * xy).sqrt();
    let (major, minor) = (half_trace + root, half_trace - root);
    let axis = (major >= ELONGATED * minor.max(f64::MIN_POSITIVE))
        .then(|| 0.5 * (2.0 * xy).atan2(xx - yy));
    Some(Pose {
        centre: (mx / w as f64, my / h as f64),
        axis,
    })
}

/// An angle wrapped into (-pi/2, pi/2]: the turn between two axes (directions modulo pi).
fn axis_turn(angle: f64) -> f64 {
    use std::f64::consts::PI;
    let wrapped = angle.rem_euclid(PI);
    if wrapped > PI / 2.0 {
        wrapped - PI
    } else {
        wrapped
    }
}

/// The mean of several poses: centroids averaged, axes averaged as doubled angles (directions
/// modulo pi), kept only when every pose has one.
fn mean_pose(poses: &[Pose]) -> Option<Pose> {
    if poses.is_empty() {
        return None;
    }
    let n = poses.len() as f64;
    let centre = (
        poses.iter().map(|p| p.centre.0).sum::<f64>() / n,
        poses.iter().map(|p| p.centre.1).sum::<f64>() / n,
    );
    let axes: Option<Vec<f64>> = poses.iter().map(|p| p.axis).collect();
    let axis = axes.map(|axes| {
        let (s, c) = axes.iter().fold((0.0, 0.0), |(s, c), a| {
            (s + (2.0 * a).sin(), c + (2.0 * a).cos())
        });
        0.5 * s.atan2(c)
    });
    Some(Pose { centre, axis })
}

/// Reference statistics the relative rules divide by, learned from the reference layouts.
/// Vectors are indexed by part; a part beyond a vector's length has statistic 0.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ReferenceStats {
    /// Number of layouts the statistics come from.
    pub images: usize,
    /// Mean number of cells labelled with the part, over the layouts where it has any.
    pub mean_area: Vec<f64>,
    /// Mean area in cells of one instance of the part, over all its instances.
    pub mean_instance_area: Vec<f64>,
    /// Mean centroid distance in cells between the part's two instances, over the layouts where
    /// it has exactly 2.
    pub mean_distance: Vec<f64>,
    /// The references' mean [`Pose`]: positions are measured after moving (and, when both
    /// have an axis, turning) each frame's foreground onto it. `None` (profiles from before
    /// pose alignment): positions as found in the frame.
    #[serde(default)]
    pub pose: Option<Pose>,
}

impl ReferenceStats {
    /// Computes the statistics from reference layouts (their geometry is not checked: only
    /// labels, instance areas and centroids are read).
    pub fn from_layouts(layouts: &[FrameLayout]) -> Self {
        let parts = layouts.iter().map(part_count).max().unwrap_or(0);
        let mut area = vec![(0.0, 0usize); parts];
        let mut instance = vec![(0.0, 0usize); parts];
        let mut distance = vec![(0.0, 0usize); parts];
        for layout in layouts {
            let mut cells = vec![0usize; parts];
            for &label in &layout.labels.labels {
                cells[usize::from(label)] += 1;
            }
            let mut by_part: Vec<Vec<&Instance>> = vec![Vec::new(); parts];
            for inst in layout.instances {
                by_part[usize::from(inst.part)].push(inst);
            }
            for p in 0..parts {
                if cells[p] > 0 {
                    area[p].0 += cells[p] as f64;
                    area[p].1 += 1;
                }
                for inst in &by_part[p] {
                    instance[p].0 += inst.area() as f64;
                    instance[p].1 += 1;
                }
                if let [a, b] = by_part[p][..] {
                    distance[p].0 += centroid_distance(a, b);
                    distance[p].1 += 1;
                }
            }
        }
        let mean = |v: Vec<(f64, usize)>| {
            v.into_iter()
                .map(|(sum, n)| if n == 0 { 0.0 } else { sum / n as f64 })
                .collect()
        };
        let poses: Vec<Pose> = layouts
            .iter()
            .filter_map(|l| foreground_pose(l.labels))
            .collect();
        ReferenceStats {
            images: layouts.len(),
            mean_area: mean(area),
            mean_instance_area: mean(instance),
            mean_distance: mean(distance),
            pose: mean_pose(&poses),
        }
    }
}

fn stat(values: &[f64], part: u16) -> f64 {
    values.get(usize::from(part)).copied().unwrap_or(0.0)
}

/// One more than the largest part index a layout mentions (labels, instances, names).
fn part_count(layout: &FrameLayout) -> usize {
    let labels = layout.labels.labels.iter().copied();
    let instances = layout.instances.iter().map(|i| i.part);
    let largest = labels.chain(instances).map(|p| usize::from(p) + 1).max();
    largest.unwrap_or(0).max(layout.names.len())
}

fn centroid_distance(a: &Instance, b: &Instance) -> f64 {
    let dx = f64::from(a.centroid.0) - f64::from(b.centroid.0);
    let dy = f64::from(a.centroid.1) - f64::from(b.centroid.1);
    dx.hypot(dy)
}

/// A rule that fired on a frame: what was measured against what was allowed. Serialised as
/// `name`, `measured`, `min`, `max`, `message`; an unbounded `min`/`max` (infinite) and an
/// unmeasurable value (NaN) serialise as `null`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FiredRule {
    /// The rule's name ([`Rule::name`]).
    pub name: String,
    /// The measured value: a count, a ratio, the number of instances out of place; for
    /// `pairs`, 0 (the pair is not allowed; allowed is 1..1).
    pub measured: f64,
    /// Allowed range, inclusive; -inf / +inf when unbounded.
    pub min: f64,
    pub max: f64,
    /// One line for an overlay badge, such as `pins: 14, expected 15`.
    pub message: String,
    /// Parts concerned (to outline their instances); not serialised.
    #[serde(skip)]
    pub parts: Vec<u16>,
}

/// Per-frame measurements the rules share.
struct Frame<'a> {
    labels: &'a LabelMap,
    /// Instances by part index.
    instances: Vec<Vec<&'a Instance>>,
    /// Labelled cells by part index.
    area: Vec<usize>,
    /// Maps a centroid (cells) to where it lies with the object in the references' pose.
    alignment: Alignment,
}

/// A rigid motion of the label map's cells: `p -> turn(p - from) + to`, turn by `angle` radians.
#[derive(Clone, Copy, Debug)]
struct Alignment {
    from: (f64, f64),
    to: (f64, f64),
    angle: f64,
}

impl Alignment {
    const NONE: Alignment = Alignment {
        from: (0.0, 0.0),
        to: (0.0, 0.0),
        angle: 0.0,
    };

    /// The motion taking the frame's foreground pose onto `reference` (both relative, on a
    /// `width x height` map); none when either is unknown.
    fn between(frame: Option<Pose>, reference: Option<Pose>, width: usize, height: usize) -> Self {
        let (Some(frame), Some(reference)) = (frame, reference) else {
            return Alignment::NONE;
        };
        let (w, h) = (width as f64, height as f64);
        let angle = match (frame.axis, reference.axis) {
            (Some(f), Some(r)) => axis_turn(r - f),
            _ => 0.0,
        };
        Alignment {
            from: (frame.centre.0 * w, frame.centre.1 * h),
            to: (reference.centre.0 * w, reference.centre.1 * h),
            angle,
        }
    }

    fn apply(&self, (x, y): (f64, f64)) -> (f64, f64) {
        let (dx, dy) = (x - self.from.0, y - self.from.1);
        let (sin, cos) = self.angle.sin_cos();
        (
            cos * dx - sin * dy + self.to.0,
            sin * dx + cos * dy + self.to.1,
        )
    }
}

impl<'a> Frame<'a> {
    /// Errors when the label map's size does not match its width x height.
    fn new(layout: &FrameLayout<'a>) -> Result<Self, String> {
        let map = layout.labels;
        if map.width.checked_mul(map.height) != Some(map.labels.len()) {
            return Err(format!(
                "label map has {} labels for {} x {} cells",
                map.labels.len(),
                map.width,
                map.height
            ));
        }
        let parts = part_count(layout);
        let mut area = vec![0usize; parts];
        for &label in &map.labels {
            area[usize::from(label)] += 1;
        }
        let mut instances = vec![Vec::new(); parts];
        for inst in layout.instances {
            instances[usize::from(inst.part)].push(inst);
        }
        Ok(Frame {
            labels: map,
            instances,
            area,
            alignment: Alignment::NONE,
        })
    }

    /// The frame with positions measured in the `reference` pose (see [`ReferenceStats::pose`]).
    fn aligned_to(mut self, reference: Option<Pose>) -> Self {
        let pose = reference.and_then(|_| foreground_pose(self.labels));
        self.alignment = Alignment::between(pose, reference, self.labels.width, self.labels.height);
        self
    }

    fn of(&self, part: u16) -> &[&'a Instance] {
        self.instances
            .get(usize::from(part))
            .map_or(&[], Vec::as_slice)
    }

    fn count(&self, part: u16) -> usize {
        self.of(part).len()
    }

    fn area(&self, part: u16) -> usize {
        self.area.get(usize::from(part)).copied().unwrap_or(0)
    }

    /// The group's class: its present member with the largest area (first listed on a tie).
    fn class(&self, group: &[u16]) -> Option<u16> {
        let mut best: Option<u16> = None;
        for &p in group {
            if self.count(p) > 0 && best.is_none_or(|b| self.area(p) > self.area(b)) {
                best = Some(p);
            }
        }
        best
    }

    /// An instance centroid in relative coordinates (0..1), in the references' pose.
    fn relative(&self, inst: &Instance) -> (f64, f64) {
        let (x, y) = self
            .alignment
            .apply((f64::from(inst.centroid.0), f64::from(inst.centroid.1)));
        (x / self.labels.width as f64, y / self.labels.height as f64)
    }

    /// A part's centroid over all its instances (area-weighted), relative; None when absent.
    fn centre(&self, part: u16) -> Option<(f64, f64)> {
        let (mut x, mut y, mut w) = (0.0, 0.0, 0.0);
        for inst in self.of(part) {
            let (ix, iy) = self.relative(inst);
            let a = inst.area() as f64;
            x += ix * a;
            y += iy * a;
            w += a;
        }
        (w > 0.0).then(|| (x / w, y / w))
    }

    fn foreground_components(&self, connectivity: Connectivity, min_cells: usize) -> usize {
        let mask: Vec<bool> = self
            .labels
            .labels
            .iter()
            .map(|&l| l != self.labels.background)
            .collect();
        // A label map of the wrong size has no components (evaluation reports it as fired).
        components(
            &mask,
            self.labels.width,
            self.labels.height,
            connectivity,
            min_cells,
        )
        .map_or(0, |found| found.len())
    }

    /// Foreground cells left of the centre over those right of it, in the references' pose;
    /// 1 with none on either side, +inf with none on the right only.
    fn balance(&self) -> f64 {
        let (w, background) = (self.labels.width, self.labels.background);
        let centre = w as f64 / 2.0;
        let (mut left, mut right) = (0usize, 0usize);
        for (i, &label) in self.labels.labels.iter().enumerate() {
            if label == background {
                continue;
            }
            let (x, _) = self.aligned_cell(i);
            if x < centre {
                left += 1;
            } else if x > centre {
                right += 1;
            }
        }
        ratio(left as f64, right as f64)
    }

    /// Number of `part`'s instances with a cell on the line at relative position `at` (cells
    /// outside the map do not count), in the references' pose.
    fn crossing(&self, part: u16, line: Line, at: f64) -> usize {
        let (w, h) = (self.labels.width, self.labels.height);
        if w == 0 || h == 0 {
            return 0;
        }
        let extent = if line == Line::Vertical { w } else { h };
        // Cells c with c <= x <= c + 1 (their centre within half a cell of x): two when x
        // falls on a border; a line beyond the map counts the edge cells.
        let x = (at * extent as f64).clamp(0.5, extent as f64 - 0.5);
        self.of(part)
            .iter()
            .filter(|inst| {
                inst.cells.iter().any(|&c| {
                    let c = c as usize;
                    let (cx, cy) = self.aligned_cell(c);
                    let v = if line == Line::Vertical { cx } else { cy };
                    c < w * h && (v - x).abs() <= 0.5
                })
            })
            .count()
    }

    /// The centre of cell `c`, in cells, in the references' pose.
    fn aligned_cell(&self, c: usize) -> (f64, f64) {
        let w = self.labels.width.max(1);
        self.alignment
            .apply(((c % w) as f64 + 0.5, (c / w) as f64 + 0.5))
    }
}

/// `value / reference`; with no reference (0, negative or NaN) 1 for a zero value (absent
/// here and in the references) and +inf otherwise.
fn ratio(value: f64, reference: f64) -> f64 {
    if reference > 0.0 {
        value / reference
    } else if value == 0.0 {
        1.0
    } else {
        f64::INFINITY
    }
}

/// Inclusive allowed range of `equal`/`min`/`max`, unbounded sides infinite.
fn range(equal: Option<f64>, min: Option<f64>, max: Option<f64>) -> (f64, f64) {
    match equal {
        Some(e) => (e, e),
        None => (
            min.unwrap_or(f64::NEG_INFINITY),
            max.unwrap_or(f64::INFINITY),
        ),
    }
}

/// A number for a message: counts without a fraction, ratios (and any fraction) with 2
/// decimals.
fn num(v: f64, ratio: bool) -> String {
    if !ratio && v.is_finite() && v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// An allowed range for a message: `15`, `at least 4`, `at most 6`, `0.80..1.20`.
fn allowed_text((lo, hi): (f64, f64), ratio: bool) -> String {
    match (lo.is_finite(), hi.is_finite()) {
        _ if lo == hi => num(lo, ratio),
        (true, true) => format!("{}..{}", num(lo, ratio), num(hi, ratio)),
        (true, false) => format!("at least {}", num(lo, ratio)),
        (false, true) => format!("at most {}", num(hi, ratio)),
        (false, false) => "any".to_string(),
    }
}

/// A fired rule when `measured` (a ratio or a count) lies outside `allowed` (NaN always does).
fn outside(
    name: String,
    measured: f64,
    allowed: (f64, f64),
    ratio: bool,
    parts: Vec<u16>,
) -> Option<FiredRule> {
    if measured >= allowed.0 && measured <= allowed.1 {
        return None;
    }
    Some(FiredRule {
        message: format!(
            "{name}: {}, expected {}",
            num(measured, ratio),
            allowed_text(allowed, ratio)
        ),
        name,
        measured,
        min: allowed.0,
        max: allowed.1,
        parts,
    })
}

/// Checks a frame against every rule and returns those that fired, in file order. The
/// composition score (eq. 4) is 1 when the result is not empty.
///
/// Part names resolve through the file's `parts`, then `layout.names`. A rule naming a part
/// that neither has, and a label map whose size does not match its width x height, fire (with
/// the reason as the message) rather than pass unchecked.
pub fn evaluate(rules: &RuleFile, layout: &FrameLayout, stats: &ReferenceStats) -> Vec<FiredRule> {
    let frame = match Frame::new(layout) {
        Ok(frame) => frame.aligned_to(stats.pose),
        Err(reason) => {
            return vec![FiredRule {
                name: "layout".into(),
                measured: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                message: format!("layout: {reason}"),
                parts: Vec::new(),
            }]
        }
    };
    let names = Names {
        renames: &rules.parts,
        names: layout.names,
        max_instances: None,
    };
    rules
        .rules
        .iter()
        .filter_map(|rule| {
            check(rule, &frame, &names, stats).unwrap_or_else(|part| {
                let name = rule.name();
                Some(FiredRule {
                    message: format!("{name}: no part named {part:?} in this profile"),
                    name,
                    measured: f64::NAN,
                    min: f64::NAN,
                    max: f64::NAN,
                    parts: Vec::new(),
                })
            })
        })
        .collect()
}

/// Checks one rule; `Err(name)` when it names an unknown part.
fn check(
    rule: &Rule,
    frame: &Frame,
    names: &Names,
    stats: &ReferenceStats,
) -> Result<Option<FiredRule>, String> {
    let resolve = |name: &String| names.index(name).ok_or_else(|| name.clone());
    let group = |members: &[String]| members.iter().map(resolve).collect::<Result<Vec<_>, _>>();
    let class_name = |class: Option<u16>| class.map_or("none".to_string(), |c| names.display(c));
    Ok(match rule {
        Rule::Count(r) => {
            let p = resolve(&r.part)?;
            let allowed = range(r.equal, r.min, r.max);
            outside(rule.name(), frame.count(p) as f64, allowed, false, vec![p])
        }
        Rule::Area(r) => {
            let p = resolve(&r.part)?;
            let measured = if r.per_instance {
                let per = match frame.count(p) {
                    0 => 0.0,
                    n => frame.of(p).iter().map(|i| i.area()).sum::<usize>() as f64 / n as f64,
                };
                ratio(per, stat(&stats.mean_instance_area, p))
            } else {
                ratio(frame.area(p) as f64, stat(&stats.mean_area, p))
            };
            outside(
                rule.name(),
                measured,
                range(None, r.min, r.max),
                true,
                vec![p],
            )
        }
        Rule::Pairs(r) => {
            let (first, second) = (group(&r.first)?, group(&r.second)?);
            let observed = (frame.class(&first), frame.class(&second));
            let mut allowed = Vec::with_capacity(r.allowed.len());
            for [a, b] in &r.allowed {
                let a = a.as_ref().map(resolve).transpose()?;
                let b = b.as_ref().map(resolve).transpose()?;
                allowed.push((a, b));
            }
            if allowed.contains(&observed) {
                None
            } else {
                let pair = |(a, b): (Option<u16>, Option<u16>)| {
                    format!("({}, {})", class_name(a), class_name(b))
                };
                let list: Vec<String> = allowed.iter().map(|&p| pair(p)).collect();
                let name = rule.name();
                Some(FiredRule {
                    message: format!(
                        "{name}: {} is not an allowed pair; allowed: {}",
                        pair(observed),
                        list.join(", ")
                    ),
                    name,
                    measured: 0.0,
                    min: 1.0,
                    max: 1.0,
                    parts: [observed.0, observed.1].into_iter().flatten().collect(),
                })
            }
        }
        Rule::CountByClass(r) => {
            let p = resolve(&r.part)?;
            let members = group(&r.group)?;
            let Some(class) = frame.class(&members) else {
                return Ok(None);
            };
            let mut bounds = None;
            for (key, b) in &r.classes {
                if resolve(key)? == class {
                    bounds = Some(b);
                }
            }
            let Some(b) = bounds else { return Ok(None) };
            let measured = match r.measure {
                Measure::Count => frame.count(p) as f64,
                Measure::Area => ratio(frame.area(p) as f64, stat(&stats.mean_area, p)),
            };
            let allowed = range(b.equal, b.min, b.max);
            let ratio = r.measure == Measure::Area;
            outside(rule.name(), measured, allowed, ratio, vec![p, class]).map(|mut fired| {
                fired.message = format!(
                    "{}: {} with {}, expected {}",
                    fired.name,
                    num(measured, ratio),
                    class_name(Some(class)),
                    allowed_text(allowed, ratio)
                );
                fired
            })
        }
        Rule::Components(r) => {
            let measured = frame.foreground_components(r.connectivity, r.min_cells) as f64;
            outside(
                rule.name(),
                measured,
                range(r.equal, r.min, r.max),
                false,
                Vec::new(),
            )
        }
        Rule::Balance(r) => outside(
            rule.name(),
            frame.balance(),
            range(None, r.min, r.max),
            true,
            Vec::new(),
        ),
        Rule::Crossing(r) => {
            let p = resolve(&r.part)?;
            let measured = frame.crossing(p, r.line, r.at) as f64;
            outside(
                rule.name(),
                measured,
                range(r.equal, r.min, r.max),
                false,
                vec![p],
            )
        }
        Rule::Distance(r) => {
            let p = resolve(&r.part)?;
            let [a, b] = frame.of(p) else { return Ok(None) };
            let measured = ratio(centroid_distance(a, b), stat(&stats.mean_distance, p));
            outside(
                rule.name(),
                measured,
                range(None, r.min, r.max),
                true,
                vec![p],
            )
        }
        Rule::Position(r) => {
            let p = resolve(&r.part)?;
            let origin = match &r.relative_to {
                Some(other) => match frame.centre(resolve(other)?) {
                    Some(centre) => centre,
                    None => return Ok(None),
                },
                None => (0.0, 0.0),
            };
            let within =
                |v: f64, range: Option<[f64; 2]>| range.is_none_or(|[lo, hi]| v >= lo && v <= hi);
            let out = frame
                .of(p)
                .iter()
                .filter(|inst| {
                    let (x, y) = frame.relative(inst);
                    !(within(x - origin.0, r.x) && within(y - origin.1, r.y))
                })
                .count();
            if out == 0 {
                None
            } else {
                let name = rule.name();
                let span = |axis: &str, range: Option<[f64; 2]>| {
                    range.map(|[lo, hi]| format!(" {axis} {lo:.2}..{hi:.2}"))
                };
                let spans: String = [span("x", r.x), span("y", r.y)]
                    .into_iter()
                    .flatten()
                    .collect();
                Some(FiredRule {
                    message: format!("{name}: {out} of {} outside{spans}", frame.count(p)),
                    name,
                    measured: out as f64,
                    min: 0.0,
                    max: 0.0,
                    parts: vec![p],
                })
            }
        }
        Rule::CoOccurrence(r) => {
            let parts = group(&r.parts)?;
            let present: Vec<u16> = parts
                .iter()
                .copied()
                .filter(|&p| frame.count(p) > 0)
                .collect();
            let allowed = range(r.equal, r.min, r.max);
            outside(rule.name(), present.len() as f64, allowed, false, parts).map(|mut fired| {
                let list: Vec<String> = present.iter().map(|&p| names.display(p)).collect();
                fired.message = format!(
                    "{}: {} present ({}), expected {}",
                    fired.name,
                    present.len(),
                    if list.is_empty() {
                        "none".to_string()
                    } else {
                        list.join(", ")
                    },
                    allowed_text(allowed, false)
                );
                fired
            })
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Learning rules from nominal layouts
// ---------------------------------------------------------------------------------------------

/// Margins and settings for [`learn_rules`]. A few shots under-sample the variation of good
/// parts, so learned ranges are widened beyond what the nominal layouts show.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LearnOptions {
    /// Category written into the learned rule file.
    pub category: String,
    /// Counts (instances, components, crossings) may leave the nominal range by this many on
    /// either side; 0 (default): logical anomalies are often off by one (14 pins for 15).
    pub count_slack: u32,
    /// Relative widening of ratio ranges (area, distance, balance): `[min (1 - m), max (1 + m)]`;
    /// default 0.15, between the reference's hand-set [0.8, 1.2] and [0.94, 1.06].
    pub ratio_margin: f64,
    /// Widening of position ranges on each side, in relative coordinates; default 0.05 (5% of
    /// the frame).
    pub position_margin: f64,
    /// Connectivity and smallest size of the foreground components the learned `components`
    /// rule counts.
    pub connectivity: Connectivity,
    pub min_component_cells: usize,
    /// Leave-one-out check at enrollment ([`learn_held_out_rules`]): a learned rule is kept
    /// only when it fires on at most this many of the nominal layouts it did not learn from;
    /// `None` keeps every learned rule.
    pub max_held_out_fires: Option<usize>,
    /// The held-out check learns with the ratio and position margins scaled by this factor
    /// (default [`HELD_OUT_MARGIN_SCALE`]): a rule must hold with part of its margin to spare.
    pub held_out_margin_scale: f64,
    /// Measure positions in the references' pose ([`ReferenceStats::pose`]), so that a part's
    /// place survives a shift or a turn of the whole object; false: in the frame.
    pub align_pose: bool,
    /// Learn count rules (instances, components, instances per class) only where every
    /// nominal layout has the same count: a product's logic fixes its counts (15 pins), and a
    /// count that varies among good frames is the part stage splitting or merging instances,
    /// whose range a few frames under-sample. false: the nominal range, however wide.
    pub stable_counts_only: bool,
    /// Widening of ratio ranges (area, distance, balance) on each side by this fraction of the
    /// observed range, before `ratio_margin`: a ratio that varies much among a few good frames
    /// varies more among many (its tails are under-sampled), one that does not keeps a tight
    /// range. 0: `ratio_margin` alone.
    pub spread_margin: f64,
}

impl Default for LearnOptions {
    fn default() -> Self {
        LearnOptions {
            category: String::new(),
            count_slack: 0,
            ratio_margin: 0.15,
            position_margin: 0.05,
            connectivity: Connectivity::Eight,
            min_component_cells: 1,
            max_held_out_fires: Some(0),
            held_out_margin_scale: HELD_OUT_MARGIN_SCALE,
            align_pose: true,
            stable_counts_only: true,
            spread_margin: SPREAD_MARGIN,
        }
    }
}

/// Why rules could not be learned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LearnError {
    #[error("no nominal layouts to learn rules from")]
    NoLayouts,
    #[error("nominal layout {index}: {reason}")]
    InvalidLayout { index: usize, reason: String },
    #[error("learning option {0} must be a finite number >= 0")]
    Options(&'static str),
}

/// `v` rounded down to 3 decimals, never above `v` (decimal rounding of a binary number can
/// land a hair above it); `v` itself beyond 1e12 or when not finite.
fn floor3(v: f64) -> f64 {
    if !v.is_finite() || v.abs() >= 1e12 {
        return v; // too large for 3 decimals to mean anything (or not finite)
    }
    let r = (v * 1000.0).floor() / 1000.0;
    if r > v {
        r - 0.001
    } else {
        r
    }
}

/// `v` rounded up to 3 decimals, never below `v`.
fn ceil3(v: f64) -> f64 {
    -floor3(-v)
}

/// A nominal ratio range widened by the relative `margin` and rounded outward to 3 decimals, so
/// the learned file reads cleanly and still holds on every nominal layout.
fn widen_ratio(lo: f64, hi: f64, margin: f64) -> (f64, f64) {
    (
        floor3((lo * (1.0 - margin)).max(0.0)),
        ceil3(hi * (1.0 + margin)),
    )
}

/// A nominal position range widened by `margin` on each side (for absolute positions clamped
/// to the frame, 0..1, but never inside the range itself) and rounded outward to 3 decimals.
fn widen_position(lo: f64, hi: f64, margin: f64, clamp: bool) -> [f64; 2] {
    let (mut lo, mut hi) = (lo - margin, hi + margin);
    if clamp {
        // Never inside the observed range: aligned to the references' pose, a part near the
        // edge may lie just outside the frame.
        (lo, hi) = (
            lo.max(0.0f64.min(lo + margin)),
            hi.min(1.0f64.max(hi - margin)),
        );
    }
    [floor3(lo), ceil3(hi)]
}

/// The default [`LearnOptions::spread_margin`], chosen on the tuning family of
/// `logsad synth --loco` (0.25, 0.5 and 1.0 scored alike there; 0 let an area rule fire on a
/// good frame).
pub const SPREAD_MARGIN: f64 = 0.5;

/// `[lo, hi]` widened on each side by `fraction` of its width.
fn spread_out(lo: f64, hi: f64, fraction: f64) -> (f64, f64) {
    let extra = (hi - lo) * fraction;
    (lo - extra, hi + extra)
}

/// Smallest and largest of finite values; None when there are none.
fn span(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((f64::min(lo, v), f64::max(hi, v))),
        })
}

/// `(equal, min, max)` for a nominal count range widened by `slack`: `equal` when one value.
fn count_bounds(lo: usize, hi: usize, slack: u32) -> (Option<f64>, Option<f64>, Option<f64>) {
    let lo = lo.saturating_sub(slack as usize);
    let hi = hi + slack as usize;
    if lo == hi {
        (Some(lo as f64), None, None)
    } else {
        ((None), (lo > 0).then_some(lo as f64), Some(hi as f64))
    }
}

/// Learns the rules that hold on every nominal layout (references and validation images), and
/// the [`ReferenceStats`] of those layouts. Parts are those of `part_names` except the
/// background (the first layout's); a part that never has an instance gets no rule.
///
/// Per part present in some layout:
/// - `count`: its instance count when the same in every layout (any range with
///   `stable_counts_only` false), widened by `count_slack`;
/// - `area` (when present in every layout): the range of its area over the mean, spread by
///   `spread_margin` and widened by `ratio_margin`;
/// - `position`: the box of its instance centroids, in the references' pose
///   ([`ReferenceStats::pose`]), widened by `position_margin`; and relative to the *anchor*
///   (of the parts present in every layout with the same count, the one with the largest mean
///   area) for every other part;
/// - `distance`: when it has exactly 2 instances in every layout;
/// - `crossing` of the vertical and horizontal centre lines: when the number of its instances
///   crossing is the same, at least 1, in every layout.
///
/// Over the whole frame: `components` (foreground components' count, stable as counts are)
/// and `balance` (when there is foreground on both sides in every layout).
///
/// Class groups: parts present in some layouts but not all, that never appear together and of
/// which exactly one appears in every layout (found greedily: each group starts from the
/// lowest free part and adds the free part, exclusive with the group so far, present in most
/// layouts). Each group gets a `co-occurrence` rule (exactly 1 present); each two groups a
/// `pairs` rule with the class pairs seen, when not every combination was seen; and every part
/// outside all groups a `count-by-class` rule per group, by count when its per-class counts
/// differ (each stable within its class, with `stable_counts_only`), by area when its widened per-class area ranges do not overlap (a looser
/// relation on a few shots is more likely chance than logic).
///
/// Errors: no layouts, a layout whose label map size does not match its width x height, a
/// margin that is negative or not finite.
pub fn learn_rules(
    nominal: &[FrameLayout],
    part_names: &[String],
    options: &LearnOptions,
) -> Result<(RuleFile, ReferenceStats), LearnError> {
    if nominal.is_empty() {
        return Err(LearnError::NoLayouts);
    }
    for (name, value) in [
        ("ratio_margin", options.ratio_margin),
        ("position_margin", options.position_margin),
        ("spread_margin", options.spread_margin),
    ] {
        if !(value.is_finite() && value >= 0.0) {
            return Err(LearnError::Options(name));
        }
    }
    let frames = nominal
        .iter()
        .enumerate()
        .map(|(index, layout)| {
            Frame::new(layout).map_err(|reason| LearnError::InvalidLayout { index, reason })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut stats = ReferenceStats::from_layouts(nominal);
    if !options.align_pose {
        stats.pose = None;
    }
    let frames: Vec<Frame> = frames
        .into_iter()
        .map(|f| f.aligned_to(stats.pose))
        .collect();
    let background = nominal[0].labels.background;
    let name = |p: u16| part_names[usize::from(p)].clone();
    let slack = options.count_slack;
    let parts: Vec<u16> = (0..part_names.len())
        .filter_map(|p| u16::try_from(p).ok())
        .filter(|&p| p != background && frames.iter().any(|f| f.count(p) > 0))
        .collect();
    let always: Vec<u16> = parts
        .iter()
        .copied()
        .filter(|&p| frames.iter().all(|f| f.count(p) > 0))
        .collect();
    // The anchor must be found alike in every frame: a part whose count varies moves its
    // centre with its pieces.
    let steady = |p: u16| frames.iter().all(|f| f.count(p) == frames[0].count(p));
    let anchor = always
        .iter()
        .copied()
        .filter(|&p| steady(p))
        .max_by(|&a, &b| {
            stat(&stats.mean_area, a)
                .total_cmp(&stat(&stats.mean_area, b))
                .then(b.cmp(&a))
        });
    let mut rules = Vec::new();

    for &p in &parts {
        let counts = frames.iter().map(|f| f.count(p));
        let (lo, hi) = (counts.clone().min().unwrap_or(0), counts.max().unwrap_or(0));
        if lo == hi || !options.stable_counts_only {
            let (equal, min, max) = count_bounds(lo, hi, slack);
            rules.push(Rule::Count(CountRule {
                name: None,
                part: name(p),
                equal,
                min,
                max,
            }));
        }

        // The area of a part absent from some good frames varies with its presence, not with
        // a logic of the product (classes that come and go have count-by-class rules).
        let mean_area = stat(&stats.mean_area, p);
        if mean_area > 0.0 && always.contains(&p) {
            let areas = frames.iter().map(|f| f.area(p) as f64 / mean_area);
            if let Some((lo, hi)) = span(areas) {
                let (lo, hi) = spread_out(lo, hi, options.spread_margin);
                let (lo, hi) = widen_ratio(lo, hi, options.ratio_margin);
                rules.push(Rule::Area(AreaRule {
                    name: None,
                    part: name(p),
                    per_instance: false,
                    min: Some(lo),
                    max: Some(hi),
                }));
            }
        }

        let centroids: Vec<(f64, f64)> = frames
            .iter()
            .flat_map(|f| f.of(p).iter().map(|inst| f.relative(inst)))
            .collect();
        let xs = span(centroids.iter().map(|c| c.0));
        let ys = span(centroids.iter().map(|c| c.1));
        if let (Some(xs), Some(ys)) = (xs, ys) {
            let m = options.position_margin;
            rules.push(Rule::Position(PositionRule {
                name: None,
                part: name(p),
                relative_to: None,
                x: Some(widen_position(xs.0, xs.1, m, true)),
                y: Some(widen_position(ys.0, ys.1, m, true)),
            }));
        }
        if let Some(anchor) = anchor.filter(|&a| a != p) {
            let offsets: Vec<(f64, f64)> = frames
                .iter()
                .filter_map(|f| {
                    let (ax, ay) = f.centre(anchor)?;
                    Some(f.of(p).iter().map(move |inst| {
                        let (x, y) = f.relative(inst);
                        (x - ax, y - ay)
                    }))
                })
                .flatten()
                .collect();
            let xs = span(offsets.iter().map(|c| c.0));
            let ys = span(offsets.iter().map(|c| c.1));
            if let (Some(xs), Some(ys)) = (xs, ys) {
                let m = options.position_margin;
                rules.push(Rule::Position(PositionRule {
                    name: None,
                    part: name(p),
                    relative_to: Some(name(anchor)),
                    x: Some(widen_position(xs.0, xs.1, m, false)),
                    y: Some(widen_position(ys.0, ys.1, m, false)),
                }));
            }
        }

        let mean_distance = stat(&stats.mean_distance, p);
        if mean_distance > 0.0 && frames.iter().all(|f| f.count(p) == 2) {
            let distances = frames.iter().filter_map(|f| match f.of(p) {
                [a, b] => Some(centroid_distance(a, b) / mean_distance),
                _ => None,
            });
            if let Some((lo, hi)) = span(distances) {
                let (lo, hi) = spread_out(lo, hi, options.spread_margin);
                let (lo, hi) = widen_ratio(lo, hi, options.ratio_margin);
                rules.push(Rule::Distance(DistanceRule {
                    name: None,
                    part: name(p),
                    min: Some(lo),
                    max: Some(hi),
                }));
            }
        }

        for line in [Line::Vertical, Line::Horizontal] {
            let crossings: BTreeSet<usize> =
                frames.iter().map(|f| f.crossing(p, line, 0.5)).collect();
            if let [n] = crossings.iter().copied().collect::<Vec<_>>()[..] {
                if n > 0 {
                    let (equal, min, max) = count_bounds(n, n, slack);
                    rules.push(Rule::Crossing(CrossingRule {
                        name: None,
                        part: name(p),
                        line,
                        at: 0.5,
                        equal,
                        min,
                        max,
                    }));
                }
            }
        }
    }

    let components: Vec<usize> = frames
        .iter()
        .map(|f| f.foreground_components(options.connectivity, options.min_component_cells))
        .collect();
    let (lo, hi) = (
        components.iter().copied().min().unwrap_or(0),
        components.iter().copied().max().unwrap_or(0),
    );
    if lo == hi || !options.stable_counts_only {
        let (equal, min, max) = count_bounds(lo, hi, slack);
        rules.push(Rule::Components(ComponentsRule {
            name: None,
            connectivity: options.connectivity,
            min_cells: options.min_component_cells.max(1),
            equal,
            min,
            max,
        }));
    }
    let balances: Vec<f64> = frames.iter().map(Frame::balance).collect();
    if balances.iter().all(|b| b.is_finite() && *b > 0.0) {
        if let Some((lo, hi)) = span(balances) {
            let (lo, hi) = spread_out(lo, hi, options.spread_margin);
            let (lo, hi) = widen_ratio(lo, hi, options.ratio_margin);
            rules.push(Rule::Balance(BalanceRule {
                name: None,
                min: Some(lo),
                max: Some(hi),
            }));
        }
    }

    let groups = class_groups(&frames, &parts, &always);
    let classes: Vec<Vec<u16>> = groups
        .iter()
        .map(|g| frames.iter().map(|f| f.class(g).unwrap_or(g[0])).collect())
        .collect();
    for (g, group) in groups.iter().enumerate() {
        rules.push(Rule::CoOccurrence(CoOccurrenceRule {
            name: None,
            parts: group.iter().map(|&p| name(p)).collect(),
            equal: Some(1.0),
            min: None,
            max: None,
        }));
        for (h, other) in groups.iter().enumerate().skip(g + 1) {
            let seen: BTreeSet<(u16, u16)> = classes[g]
                .iter()
                .copied()
                .zip(classes[h].iter().copied())
                .collect();
            if seen.len() < group.len() * other.len() {
                rules.push(Rule::Pairs(PairsRule {
                    name: None,
                    first: group.iter().map(|&p| name(p)).collect(),
                    second: other.iter().map(|&p| name(p)).collect(),
                    allowed: seen
                        .iter()
                        .map(|&(a, b)| [Some(name(a)), Some(name(b))])
                        .collect(),
                }));
            }
        }
    }
    let grouped: BTreeSet<u16> = groups.iter().flatten().copied().collect();
    for (g, group) in groups.iter().enumerate() {
        for &p in parts.iter().filter(|p| !grouped.contains(p)) {
            rules.extend(learn_by_class(
                &frames,
                &stats,
                group,
                &classes[g],
                p,
                &name,
                options,
            ));
        }
    }

    let file = RuleFile {
        category: options.category.clone(),
        parts: BTreeMap::new(),
        rules,
    };
    Ok((file, stats))
}

/// A learned rule left out by [`learn_held_out_rules`]: learned without one nominal layout at a
/// time, it fired on `fired` of the `held_out` layouts it did not learn from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct UnstableRule {
    pub name: String,
    pub fired: usize,
    pub held_out: usize,
}

/// The default [`LearnOptions::held_out_margin_scale`], chosen on the tuning family of
/// `logsad synth --loco`.
pub const HELD_OUT_MARGIN_SCALE: f64 = 0.25;

/// [`learn_rules`] on all `nominal` layouts, keeping only the rules that hold on good frames
/// they did not learn from: for each layout, the rules learned from the others, with margins
/// scaled by [`LearnOptions::held_out_margin_scale`], are evaluated on it (leave-one-out); a rule (by [`Rule::name`]) that fires on more than `max_fired` held-out
/// layouts is left out, since its range is narrower than the product's nominal variation and
/// it would fire on good frames. Returns the kept rules, the statistics of all layouts and the
/// rules left out, in the order learned. With fewer than 3 layouts every rule is kept (one
/// layout cannot learn a range).
///
/// Errors as [`learn_rules`].
pub fn learn_held_out_rules(
    nominal: &[FrameLayout],
    part_names: &[String],
    options: &LearnOptions,
    max_fired: usize,
) -> Result<(RuleFile, ReferenceStats, Vec<UnstableRule>), LearnError> {
    let (mut file, stats) = learn_rules(nominal, part_names, options)?;
    if nominal.len() < 3 {
        return Ok((file, stats, Vec::new()));
    }
    // A rule must hold on the frames it did not learn from with a fraction of its margin to
    // spare: a handful of good frames under-samples the tails of the nominal variation.
    let strict = LearnOptions {
        ratio_margin: options.ratio_margin * options.held_out_margin_scale,
        position_margin: options.position_margin * options.held_out_margin_scale,
        spread_margin: options.spread_margin * options.held_out_margin_scale,
        ..options.clone()
    };
    let mut fired: BTreeMap<String, usize> = BTreeMap::new();
    for held_out in 0..nominal.len() {
        let others: Vec<FrameLayout> = nominal
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != held_out)
            .map(|(_, layout)| *layout)
            .collect();
        let (rules, stats) = learn_rules(&others, part_names, &strict)?;
        for rule in evaluate(&rules, &nominal[held_out], &stats) {
            *fired.entry(rule.name).or_default() += 1;
        }
    }
    let mut unstable = Vec::new();
    file.rules.retain(|rule| {
        let name = rule.name();
        let count = fired.get(&name).copied().unwrap_or(0);
        if count > max_fired {
            unstable.push(UnstableRule {
                name,
                fired: count,
                held_out: nominal.len(),
            });
            false
        } else {
            true
        }
    });
    Ok((file, stats, unstable))
}

/// Class groups: see [`learn_rules`]. `parts` ascending; `always` the parts in every frame.
fn class_groups(frames: &[Frame], parts: &[u16], always: &[u16]) -> Vec<Vec<u16>> {
    let present = |p: u16| -> Vec<bool> { frames.iter().map(|f| f.count(p) > 0).collect() };
    let sometimes: Vec<(u16, Vec<bool>)> = parts
        .iter()
        .copied()
        .filter(|p| !always.contains(p))
        .map(|p| (p, present(p)))
        .collect();
    let mut used = BTreeSet::new();
    let mut groups = Vec::new();
    for (p, seen) in &sometimes {
        if used.contains(p) {
            continue;
        }
        let mut group = vec![*p];
        let mut covered = seen.clone();
        loop {
            let next = sometimes
                .iter()
                .filter(|(q, _)| !used.contains(q) && !group.contains(q))
                .filter(|(_, s)| s.iter().zip(&covered).all(|(a, b)| !(*a && *b)))
                .max_by_key(|(q, s)| (s.iter().filter(|&&v| v).count(), std::cmp::Reverse(*q)));
            let Some((q, s)) = next else { break };
            group.push(*q);
            covered.iter_mut().zip(s).for_each(|(c, v)| *c |= *v);
        }
        if group.len() >= 2 && covered.iter().all(|&c| c) {
            group.sort_unstable();
            used.extend(group.iter().copied());
            groups.push(group);
        }
    }
    groups
}

/// A `count-by-class` rule for part `p` by `group`, whose class in each frame is `classes`.
fn learn_by_class(
    frames: &[Frame],
    stats: &ReferenceStats,
    group: &[u16],
    classes: &[u16],
    p: u16,
    name: &dyn Fn(u16) -> String,
    options: &LearnOptions,
) -> Option<Rule> {
    let of_class = |c: u16| {
        frames
            .iter()
            .zip(classes)
            .filter(move |(_, &k)| k == c)
            .map(|(f, _)| f)
    };
    let counts: Vec<(usize, usize)> = group
        .iter()
        .map(|&c| {
            let n: Vec<usize> = of_class(c).map(|f| f.count(p)).collect();
            (
                n.iter().copied().min().unwrap_or(0),
                n.iter().copied().max().unwrap_or(0),
            )
        })
        .collect();
    let rule = |measure, classes: BTreeMap<String, ClassBounds>| {
        Rule::CountByClass(CountByClassRule {
            name: None,
            part: name(p),
            group: group.iter().map(|&c| name(c)).collect(),
            measure,
            classes,
        })
    };
    if counts.iter().any(|c| *c != counts[0]) {
        if options.stable_counts_only && counts.iter().any(|&(lo, hi)| lo != hi) {
            return None;
        }
        let classes = group
            .iter()
            .zip(&counts)
            .map(|(&c, &(lo, hi))| {
                let (equal, min, max) = count_bounds(lo, hi, options.count_slack);
                (name(c), ClassBounds { equal, min, max })
            })
            .collect();
        return Some(rule(Measure::Count, classes));
    }
    let mean = stat(&stats.mean_area, p);
    if mean <= 0.0 {
        return None;
    }
    let areas: Vec<(f64, f64)> = group
        .iter()
        .map(|&c| {
            let (lo, hi) = span(of_class(c).map(|f| f.area(p) as f64 / mean)).unwrap_or((0.0, 0.0));
            let (lo, hi) = spread_out(lo, hi, options.spread_margin);
            widen_ratio(lo, hi, options.ratio_margin)
        })
        .collect();
    let overlap = areas
        .iter()
        .enumerate()
        .any(|(i, a)| areas[i + 1..].iter().any(|b| a.0 <= b.1 && b.0 <= a.1));
    if overlap {
        return None;
    }
    let classes = group
        .iter()
        .zip(&areas)
        .map(|(&c, &(lo, hi))| {
            let bounds = ClassBounds {
                equal: None,
                min: Some(lo),
                max: Some(hi),
            };
            (name(c), bounds)
        })
        .collect();
    Some(rule(Measure::Area, classes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layout built from rows of digits (part index per cell; `.` is background part 0), with
    /// each part's 8-connected components as instances.
    struct Scene {
        map: LabelMap,
        instances: Vec<Instance>,
        names: Vec<String>,
    }

    impl Scene {
        fn new(rows: &[&str]) -> Scene {
            let width = rows[0].len();
            let labels: Vec<u16> = rows
                .iter()
                .flat_map(|r| r.chars().map(|c| c.to_digit(10).map_or(0, |d| d as u16)))
                .collect();
            let map = LabelMap {
                width,
                height: rows.len(),
                labels,
                background: 0,
            };
            let mut instances = Vec::new();
            for part in 1..10u16 {
                let mask: Vec<bool> = map.labels.iter().map(|&l| l == part).collect();
                let found = components(&mask, width, rows.len(), Connectivity::Eight, 1).unwrap();
                for cells in found {
                    let n = cells.len() as f32;
                    let x = cells
                        .iter()
                        .map(|&c| (c as usize % width) as f32 + 0.5)
                        .sum::<f32>();
                    let y = cells
                        .iter()
                        .map(|&c| (c as usize / width) as f32 + 0.5)
                        .sum::<f32>();
                    instances.push(Instance {
                        part,
                        cells,
                        centroid: (x / n, y / n),
                    });
                }
            }
            Scene {
                map,
                instances,
                names: (0..8).map(|i| format!("part{i}")).collect(),
            }
        }

        fn layout(&self) -> FrameLayout<'_> {
            FrameLayout {
                labels: &self.map,
                instances: &self.instances,
                names: &self.names,
            }
        }
    }

    fn names() -> Vec<String> {
        (0..8).map(|i| format!("part{i}")).collect()
    }

    fn file(rules: &str) -> RuleFile {
        let text = format!(r#"{{"category": "test", "parts": {{"pins": 1}}, "rules": [{rules}]}}"#);
        parse_rules(&text, Path::new("test.json"), &names(), None).unwrap()
    }

    /// Names of the rules that fire, and their messages.
    fn fired(rules: &str, scene: &Scene, stats: &ReferenceStats) -> Vec<(String, String)> {
        evaluate(&file(rules), &scene.layout(), stats)
            .into_iter()
            .map(|f| (f.name, f.message))
            .collect()
    }

    fn err(text: &str) -> RuleError {
        parse_rules(text, Path::new("meta/kit.json"), &names(), None).unwrap_err()
    }

    fn rules_err(rules: &str) -> RuleError {
        err(&format!(r#"{{"category": "kit", "rules": [{rules}]}}"#))
    }

    #[test]
    fn counts_no_frame_can_reach_are_refused() {
        let parse = |rules: &str, most: Option<u64>| {
            let text = format!(r#"{{"category": "kit", "rules": [{rules}]}}"#);
            parse_rules(&text, Path::new("kit.json"), &names(), most)
        };
        // 2^64: every frame would fire.
        let e = parse(
            r#"{"kind": "count", "part": "part1", "equal": 18446744073709551616}"#,
            Some(5000),
        )
        .unwrap_err();
        assert_eq!(e.path, "rules[0].equal");
        assert!(
            matches!(e.kind, RuleErrorKind::Unreachable { most: 5000, .. }),
            "{e}"
        );
        assert!(parse(
            r#"{"kind": "count", "part": "part1", "min": 5000}"#,
            Some(5000)
        )
        .is_ok());
        let e = parse(
            r#"{"kind": "count", "part": "part1", "min": 5001}"#,
            Some(5000),
        );
        assert_eq!(e.unwrap_err().path, "rules[0].min");
        // An upper bound above the most is always met: harmless, kept.
        assert!(parse(
            r#"{"kind": "count", "part": "part1", "max": 1e30}"#,
            Some(5000)
        )
        .is_ok());
        // Unknown label map: the count alone cannot be judged.
        assert!(parse(r#"{"kind": "count", "part": "part1", "min": 5001}"#, None).is_ok());
        let e = parse(r#"{"kind": "components", "min": 7000}"#, Some(6999));
        assert_eq!(e.unwrap_err().path, "rules[0].min");
        // Two listed parts: at most 2 of them are present.
        let e = parse(
            r#"{"kind": "co-occurrence", "parts": ["part1", "part2"], "equal": 3}"#,
            None,
        )
        .unwrap_err();
        assert!(
            matches!(e.kind, RuleErrorKind::Unreachable { most: 2, .. }),
            "{e}"
        );
    }

    #[test]
    fn count_fires_with_message_and_stays_quiet() {
        let scene = Scene::new(&["1.1.1", "....."]);
        let stats = ReferenceStats::default();
        let rules = r#"{"kind": "count", "part": "pins", "equal": 3},
            {"kind": "count", "name": "pins", "part": "pins", "equal": 4},
            {"kind": "count", "part": "part1", "min": 1, "max": 2},
            {"kind": "count", "part": "part1", "min": 4},
            {"kind": "count", "part": "part2", "max": 0}"#;
        assert_eq!(
            fired(rules, &scene, &stats),
            vec![
                ("pins".to_string(), "pins: 3, expected 4".to_string()),
                (
                    "count(part1)".to_string(),
                    "count(part1): 3, expected 1..2".to_string()
                ),
                (
                    "count(part1)".to_string(),
                    "count(part1): 3, expected at least 4".to_string()
                ),
            ]
        );
        let fired = evaluate(&file(rules), &scene.layout(), &stats);
        assert_eq!(
            (fired[0].measured, fired[0].min, fired[0].max),
            (3.0, 4.0, 4.0)
        );
        assert_eq!(fired[0].parts, vec![1]);
        assert_eq!(
            serde_json::to_value(&fired[2]).unwrap(),
            serde_json::json!({"name": "count(part1)", "measured": 3.0, "min": 4.0, "max": null,
                               "message": "count(part1): 3, expected at least 4"})
        );
    }

    #[test]
    fn area_total_and_per_instance_over_reference_means() {
        // Part 1: instances of 2 and 4 cells, 6 in all.
        let scene = Scene::new(&["11..1", "....1", "....1", "....1"]);
        let mut stats = ReferenceStats {
            images: 1,
            mean_area: vec![0.0, 4.0],
            mean_instance_area: vec![0.0, 3.0],
            mean_distance: Vec::new(),
            pose: None,
        };
        let rules = r#"{"kind": "area", "part": "part1", "min": 0.8, "max": 1.2},
            {"kind": "area", "part": "part1", "max": 1.6},
            {"kind": "area", "part": "part1", "per_instance": true, "min": 0.9, "max": 1.1}"#;
        assert_eq!(
            fired(rules, &scene, &stats),
            vec![(
                "area(part1)".to_string(),
                "area(part1): 1.50, expected 0.80..1.20".to_string()
            )]
        );
        stats.mean_instance_area[1] = 2.0;
        let names: Vec<String> = fired(rules, &scene, &stats)
            .into_iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(names, ["area(part1)", "area-per-instance(part1)"]);
        // No reference area: absent is nominal (ratio 1), present is infinitely more.
        let absent = r#"{"kind": "area", "part": "part2", "min": 0.9, "max": 1.1},
            {"kind": "area", "part": "part1", "per_instance": true, "min": 0.9, "max": 1.1}"#;
        let none = ReferenceStats::default();
        let fired = evaluate(&file(absent), &scene.layout(), &none);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].measured, f64::INFINITY);
    }

    #[test]
    fn pairs_take_each_groups_largest_present_member() {
        let rule = r#"{"kind": "pairs", "first": ["part2", "part3"], "second": ["part4", "part5"],
                       "allowed": [["part2", "part4"], ["part3", "part5"]]}"#;
        let stats = ReferenceStats::default();
        assert!(fired(rule, &Scene::new(&["2..4"]), &stats).is_empty());
        assert_eq!(
            fired(rule, &Scene::new(&["2..5"]), &stats),
            vec![(
                "pairs(part2|part3, part4|part5)".to_string(),
                "pairs(part2|part3, part4|part5): (part2, part5) is not an allowed pair; \
                 allowed: (part2, part4), (part3, part5)"
                    .to_string()
            )]
        );
        // Part 3 covers more cells than part 2: the first group's class is part 3.
        assert!(fired(rule, &Scene::new(&["2.33.5"]), &stats).is_empty());
        assert_eq!(fired(rule, &Scene::new(&["22.3.5"]), &stats).len(), 1);
        let nothing = fired(rule, &Scene::new(&["1..."]), &stats);
        assert!(nothing[0].1.contains("(none, none) is not an allowed pair"));
        let with_none = r#"{"kind": "pairs", "first": ["part2"], "second": ["part4"],
                            "allowed": [[null, null]]}"#;
        assert!(fired(with_none, &Scene::new(&["1..."]), &stats).is_empty());
        assert_eq!(fired(with_none, &Scene::new(&["2..."]), &stats).len(), 1);
    }

    #[test]
    fn count_by_class_follows_the_group_class() {
        let rule = r#"{"kind": "count-by-class", "part": "part1", "group": ["part2", "part3"],
                       "classes": {"part2": {"equal": 2}, "part3": {"min": 3, "max": 3}}}"#;
        let stats = ReferenceStats::default();
        assert!(fired(rule, &Scene::new(&["22.1.1"]), &stats).is_empty());
        assert_eq!(
            fired(rule, &Scene::new(&["22.1.1.1"]), &stats),
            vec![(
                "count-by-class(part1 by part2|part3)".to_string(),
                "count-by-class(part1 by part2|part3): 3 with part2, expected 2".to_string()
            )]
        );
        assert!(fired(rule, &Scene::new(&["33.1.1.1"]), &stats).is_empty());
        assert_eq!(fired(rule, &Scene::new(&["33.1.1.."]), &stats).len(), 1);
        // No class in the frame: nothing to check.
        assert!(fired(rule, &Scene::new(&["...1.1.1"]), &stats).is_empty());

        let by_area = r#"{"kind": "count-by-class", "part": "part1", "group": ["part2", "part3"],
            "measure": "area", "classes": {"part2": {"min": 0.5, "max": 1.5}}}"#;
        let stats = ReferenceStats {
            images: 1,
            mean_area: vec![0.0, 2.0],
            ..Default::default()
        };
        assert!(fired(by_area, &Scene::new(&["2.11"]), &stats).is_empty());
        let big = fired(by_area, &Scene::new(&["2.111.11"]), &stats);
        assert_eq!(
            big[0].1,
            "area-by-class(part1 by part2|part3): 2.50 with part2, expected 0.50..1.50"
        );
    }

    #[test]
    fn components_count_foreground_with_connectivity() {
        let stats = ReferenceStats::default();
        let one = r#"{"kind": "components", "equal": 1}"#;
        let one4 = r#"{"kind": "components", "equal": 1, "connectivity": "four"}"#;
        let diagonal = Scene::new(&["12..", "..3.", "...."]);
        assert!(fired(one, &diagonal, &stats).is_empty());
        assert_eq!(
            fired(one4, &diagonal, &stats),
            vec![(
                "components".to_string(),
                "components: 2, expected 1".to_string()
            )]
        );
        let apart = Scene::new(&["11...2", "......"]);
        assert_eq!(fired(one, &apart, &stats).len(), 1);
        let big = r#"{"kind": "components", "equal": 1, "min_cells": 2}"#;
        assert!(fired(big, &apart, &stats).is_empty());
    }

    #[test]
    fn balance_compares_left_and_right_of_the_centre() {
        let stats = ReferenceStats::default();
        let rule = r#"{"kind": "balance", "min": 0.8, "max": 1.2}"#;
        // Width 5: columns 0-1 left, 3-4 right, the centre column 2 on neither side.
        let heavy = Scene::new(&["11111", "11..."]);
        assert_eq!(
            fired(rule, &heavy, &stats),
            vec![(
                "balance".to_string(),
                "balance: 2.00, expected 0.80..1.20".to_string()
            )]
        );
        assert!(fired(rule, &Scene::new(&["1.1.1", "11.11"]), &stats).is_empty());
        assert!(fired(rule, &Scene::new(&["....."]), &stats).is_empty());
    }

    #[test]
    fn crossing_counts_instances_on_the_line() {
        let stats = ReferenceStats::default();
        // Width 4, x = 0.5 falls on the border of columns 1 and 2: both are on the line.
        let scene = Scene::new(&["1..1", ".1..", "...."]);
        let rule = |line: &str, at: f64, equal: u32| {
            format!(
                r#"{{"kind": "crossing", "part": "part1", "line": "{line}", "at": {at}, "equal": {equal}}}"#
            )
        };
        assert!(fired(&rule("vertical", 0.5, 1), &scene, &stats).is_empty());
        assert_eq!(
            fired(&rule("vertical", 0.5, 2), &scene, &stats),
            vec![(
                "crossing(part1, x=0.5)".to_string(),
                "crossing(part1, x=0.5): 1, expected 2".to_string()
            )]
        );
        // x = 0.375 * 4 = 1.5: column 1 only, which the diagonal instance (0,0)-(1,1) covers.
        assert!(fired(&rule("vertical", 0.375, 1), &scene, &stats).is_empty());
        // x = 0.9 * 4 = 3.6: column 3, the lone cell at (3, 0).
        assert!(fired(&rule("vertical", 0.9, 1), &scene, &stats).is_empty());
        // Height 3, y = 1.5: row 1 only.
        assert!(fired(&rule("horizontal", 0.5, 1), &scene, &stats).is_empty());
        assert_eq!(fired(&rule("horizontal", 0.0, 0), &scene, &stats).len(), 1);
    }

    #[test]
    fn distance_with_exactly_two_instances() {
        let two = Scene::new(&["1...1"]);
        let mut stats = ReferenceStats {
            images: 1,
            mean_distance: vec![0.0, 2.0],
            ..Default::default()
        };
        let rule = r#"{"kind": "distance", "part": "part1", "min": 0.6, "max": 1.4}"#;
        assert_eq!(
            fired(rule, &two, &stats),
            vec![(
                "distance(part1)".to_string(),
                "distance(part1): 2.00, expected 0.60..1.40".to_string()
            )]
        );
        stats.mean_distance[1] = 4.0;
        assert!(fired(rule, &two, &stats).is_empty());
        stats.mean_distance[1] = 2.0;
        assert!(fired(rule, &Scene::new(&["1.1.1"]), &stats).is_empty());
    }

    #[test]
    fn position_in_the_frame_and_relative_to_a_part() {
        let stats = ReferenceStats::default();
        // Width 10, height 2: part 1 at x = 0.05, part 2 at x = 0.85; both at y = 0.25.
        let scene = Scene::new(&["1.......2.", ".........."]);
        let inside = r#"{"kind": "position", "part": "part1", "x": [0.0, 0.3], "y": [0.2, 0.3]}"#;
        assert!(fired(inside, &scene, &stats).is_empty());
        let right = r#"{"kind": "position", "part": "part1", "x": [0.5, 1.0]}"#;
        assert_eq!(
            fired(right, &scene, &stats),
            vec![(
                "position(part1)".to_string(),
                "position(part1): 1 of 1 outside x 0.50..1.00".to_string()
            )]
        );
        let relative = r#"{"kind": "position", "part": "part2", "relative_to": "part1",
                           "x": [0.7, 0.9], "y": [-0.1, 0.1]}"#;
        assert!(fired(relative, &scene, &stats).is_empty());
        let moved = Scene::new(&["....1...2.", ".........."]);
        assert_eq!(
            fired(relative, &moved, &stats)[0].0,
            "position(part2 from part1)"
        );
        // Without the reference part there is nothing to measure from.
        assert!(fired(relative, &Scene::new(&["........2."]), &stats).is_empty());
    }

    #[test]
    fn co_occurrence_counts_present_parts() {
        let stats = ReferenceStats::default();
        let rule = r#"{"kind": "co-occurrence", "parts": ["part2", "part3", "part4"], "equal": 1}"#;
        assert!(fired(rule, &Scene::new(&["1.3."]), &stats).is_empty());
        assert_eq!(
            fired(rule, &Scene::new(&["2.4."]), &stats),
            vec![(
                "co-occurrence(part2|part3|part4)".to_string(),
                "co-occurrence(part2|part3|part4): 2 present (part2, part4), expected 1"
                    .to_string()
            )]
        );
        let none = fired(rule, &Scene::new(&["1..."]), &stats);
        assert!(none[0].1.contains("0 present (none)"));
    }

    #[test]
    fn unknown_parts_and_broken_layouts_fire_instead_of_passing() {
        let scene = Scene::new(&["1.1"]);
        let stats = ReferenceStats::default();
        let mut rules = file(r#"{"kind": "count", "part": "part1", "equal": 2}"#);
        assert!(evaluate(&rules, &scene.layout(), &stats).is_empty());
        rules.rules.push(Rule::Count(CountRule {
            part: "wheel".into(),
            equal: Some(1.0),
            ..Default::default()
        }));
        let fired = evaluate(&rules, &scene.layout(), &stats);
        assert_eq!(
            fired[0].message,
            "count(wheel): no part named \"wheel\" in this profile"
        );
        let mut broken = Scene::new(&["1.1"]);
        broken.map.height = 2;
        let fired = evaluate(&rules, &broken.layout(), &stats);
        assert_eq!(fired.len(), 1);
        assert_eq!(
            fired[0].message,
            "layout: label map has 3 labels for 3 x 2 cells"
        );
    }

    #[test]
    fn bad_json_names_file_line_and_column() {
        let e = err("{\n  \"category\": \"kit\",\n  \"rules\": [ }\n}");
        assert_eq!(e.path, "");
        assert!(
            matches!(
                e.kind,
                RuleErrorKind::Json {
                    line: 3,
                    column: 14,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "meta/kit.json: bad JSON at line 3, column 14: expected value"
        );
    }

    #[test]
    fn unknown_kind_lists_the_known_ones() {
        let e = rules_err(r#"{"kind": "count", "part": "part1", "equal": 1}, {"kind": "colour"}"#);
        assert_eq!(e.path, "rules[1].kind");
        let text = e.to_string();
        assert!(
            text.starts_with("meta/kit.json: rules[1].kind: unknown rule kind \"colour\""),
            "{text}"
        );
        for kind in RULE_KINDS {
            assert!(text.contains(kind), "{text}");
        }
        assert_eq!(rules_err(r#"{"part": "part1"}"#).path, "rules[0].kind");
        assert_eq!(rules_err(r#"[1]"#).path, "rules[0]");
    }

    #[test]
    fn unknown_part_lists_the_profiles_parts() {
        let e = rules_err(r#"{"kind": "count", "part": "wheel", "equal": 1}"#);
        assert_eq!(e.path, "rules[0].part");
        assert_eq!(
            e.kind,
            RuleErrorKind::UnknownPart {
                found: "wheel".into(),
                known: names()
            }
        );
        assert!(e
            .to_string()
            .contains("the profile has: part0, part1, part2"));
        let e = rules_err(
            r#"{"kind": "pairs", "first": ["part1"], "second": ["part2", "wheel"], "allowed": [["part1", "part2"]]}"#,
        );
        assert_eq!(e.path, "rules[0].second[1]");
        let e = rules_err(
            r#"{"kind": "pairs", "first": ["part1"], "second": ["part2"], "allowed": [["part1", "part3"]]}"#,
        );
        assert_eq!(e.path, "rules[0].allowed[0][1]");
        assert!(e.to_string().contains("not in second (part2)"), "{e}");
        let e = rules_err(
            r#"{"kind": "count-by-class", "part": "part1", "group": ["part2"], "classes": {"part3": {"equal": 1}}}"#,
        );
        assert_eq!(e.path, "rules[0].classes.part3");
        let e = err(r#"{"category": "kit", "parts": {"pins": 8}, "rules": []}"#);
        assert_eq!(e.path, "parts.pins");
        assert!(
            e.to_string().contains("the profile has 8 parts, 0..7"),
            "{e}"
        );
        let e = err(r#"{"category": "kit", "parts": {"part2": 3}, "rules": []}"#);
        assert_eq!(e.path, "parts.part2");
    }

    #[test]
    fn bounds_errors_name_the_field() {
        let e = rules_err(r#"{"kind": "count", "part": "part1", "min": 5, "max": 3}"#);
        assert_eq!(e.path, "rules[0].max");
        assert_eq!(e.kind, RuleErrorKind::BoundsOrder { min: 5.0, max: 3.0 });
        assert_eq!(
            e.to_string(),
            "meta/kit.json: rules[0].max: bounds out of order: min 5 > max 3"
        );
        let e = rules_err(r#"{"kind": "count", "part": "part1", "min": -1}"#);
        assert_eq!(
            (e.path.as_str(), &e.kind),
            ("rules[0].min", &RuleErrorKind::Negative(-1.0))
        );
        let e = rules_err(r#"{"kind": "components", "equal": 1.5}"#);
        assert_eq!(
            (e.path.as_str(), &e.kind),
            ("rules[0].equal", &RuleErrorKind::NotWhole(1.5))
        );
        let e = rules_err(r#"{"kind": "area", "part": "part1", "min": -0.5}"#);
        assert_eq!(e.kind, RuleErrorKind::Negative(-0.5));
        assert_eq!(
            rules_err(r#"{"kind": "count", "part": "part1"}"#).path,
            "rules[0]"
        );
        let e = rules_err(r#"{"kind": "count", "part": "part1", "equal": 2, "max": 3}"#);
        assert_eq!(e.path, "rules[0].equal");
        let e = rules_err(r#"{"kind": "position", "part": "part1", "x": [0.6, 0.4]}"#);
        assert_eq!(
            (e.path.as_str(), &e.kind),
            (
                "rules[0].x[1]",
                &RuleErrorKind::BoundsOrder { min: 0.6, max: 0.4 }
            )
        );
        let e = rules_err(
            r#"{"kind": "crossing", "part": "part1", "line": "vertical", "at": 1.5, "equal": 1}"#,
        );
        assert_eq!(e.path, "rules[0].at");
        let e = rules_err(
            r#"{"kind": "count-by-class", "part": "part1", "group": ["part2"], "classes": {"part2": {"min": 3, "max": 2}}}"#,
        );
        assert_eq!(e.path, "rules[0].classes.part2.max");
    }

    #[test]
    fn serde_errors_carry_the_json_path() {
        let e = rules_err(r#"{"kind": "count", "part": "part1", "maxx": 3}"#);
        assert_eq!(e.path, "rules[0].maxx");
        assert_eq!(
            e.to_string(),
            "meta/kit.json: rules[0].maxx: unknown field `maxx`, \
             expected one of `name`, `part`, `equal`, `min`, `max`"
        );
        let e = rules_err(r#"{"kind": "count", "part": "part1", "max": "3"}"#);
        assert_eq!(e.path, "rules[0].max");
        assert!(e.to_string().contains("invalid type: string \"3\""), "{e}");
        let e = rules_err(
            r#"{"kind": "pairs", "first": ["part1"], "second": ["part2"], "allowed": [["part1", 2]]}"#,
        );
        assert_eq!(e.path, "rules[0].allowed[0][1]");
        let e =
            rules_err(r#"{"kind": "crossing", "part": "part1", "line": "diagonal", "equal": 1}"#);
        assert_eq!(e.path, "rules[0].line");
        let e = err(r#"{"category": "kit", "rules": [], "extra": 1}"#);
        assert_eq!(e.path, "extra");
        let e = err(r#"{"category": "kit"}"#);
        assert_eq!(
            (e.path.as_str(), e.to_string().as_str()),
            ("", "meta/kit.json: missing field `rules`")
        );
    }

    /// A kit: part 1 (body) in every image, cables part 2 or part 3 (never both), and 2 clamps
    /// (part 4) with cable part 2 but 3 with part 3.
    fn kit() -> Vec<Scene> {
        vec![
            Scene::new(&["2.11..4.", "..11....", "4.11....", "........"]),
            Scene::new(&[".211....", "..11..4.", "4.11....", "........"]),
            Scene::new(&["3.11.4.4", "..11....", "4.11....", "........"]),
            Scene::new(&["..11.4.4", "3.11....", "..11..4.", "........"]),
        ]
    }

    fn learn(scenes: &[Scene], options: &LearnOptions) -> (RuleFile, ReferenceStats) {
        let layouts: Vec<FrameLayout> = scenes.iter().map(Scene::layout).collect();
        learn_rules(&layouts, &names(), options).unwrap()
    }

    #[test]
    fn reference_stats_are_means_over_layouts() {
        let scenes = kit();
        let layouts: Vec<FrameLayout> = scenes.iter().map(Scene::layout).collect();
        let stats = ReferenceStats::from_layouts(&layouts);
        assert_eq!(stats.images, 4);
        // Part 4: 2, 2, 3, 3 cells; part 2 only where present (1 cell twice).
        assert_eq!(stats.mean_area[4], 2.5);
        assert_eq!(stats.mean_area[2], 1.0);
        assert_eq!(stats.mean_instance_area[1], 6.0);
        // Part 4 has exactly 2 instances in the first two layouts: (6.5, 0.5)-(0.5, 2.5) and
        // (6.5, 1.5)-(0.5, 2.5).
        let expected = (40f64.sqrt() + 37f64.sqrt()) / 2.0;
        assert!((stats.mean_distance[4] - expected).abs() < 1e-6);
        assert_eq!(stats.mean_distance[1], 0.0);
    }

    #[test]
    fn counts_that_vary_among_good_frames_learn_no_count_rule() {
        // Part 1 has one instance everywhere; part 4 has 2, 2, 3 and 3.
        let (rules, _) = learn(&kit(), &LearnOptions::default());
        let named = |name: &str| rules.rules.iter().find(|r| r.name() == name).cloned();
        assert_eq!(
            named("count(part1)"),
            Some(Rule::Count(CountRule {
                part: "part1".into(),
                equal: Some(1.0),
                ..Default::default()
            }))
        );
        assert_eq!(named("count(part4)"), None, "part 4's count varies");
        // The foreground components vary too (part 4's instances are apart).
        assert_eq!(named("components"), None);
        let (all, _) = learn(
            &kit(),
            &LearnOptions {
                stable_counts_only: false,
                ..Default::default()
            },
        );
        assert!(all.rules.iter().any(|r| r.name() == "count(part4)"));
        // Part 4's area over its mean (2.5 cells) is 0.8 to 1.2: spread by half that width
        // (0.6..1.4), then by 15%, 0.51..1.61. Part 1's does not vary: the 15% alone.
        let area = |name: &str| match named(name) {
            Some(Rule::Area(area)) => (area.min, area.max),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(area("area(part4)"), (Some(0.51), Some(1.61)));
        assert_eq!(area("area(part1)"), (Some(0.85), Some(1.15)));
    }

    #[test]
    fn learns_ranges_groups_and_count_by_class() {
        let scenes = kit();
        // Positions in the frame, as computed by hand below; the nominal ranges of counts,
        // varying ones included.
        let (rules, _) = learn(
            &scenes,
            &LearnOptions {
                category: "kit".into(),
                align_pose: false,
                stable_counts_only: false,
                spread_margin: 0.0,
                ..Default::default()
            },
        );
        assert_eq!(rules.category, "kit");
        let has = |rule: Rule| {
            assert!(
                rules.rules.contains(&rule),
                "missing {rule:?} in {:#?}",
                rules.rules
            )
        };
        has(Rule::Count(CountRule {
            part: "part1".into(),
            equal: Some(1.0),
            ..Default::default()
        }));
        has(Rule::Count(CountRule {
            part: "part2".into(),
            max: Some(1.0),
            ..Default::default()
        }));
        has(Rule::Count(CountRule {
            part: "part4".into(),
            min: Some(2.0),
            max: Some(3.0),
            ..Default::default()
        }));
        // Area of part 4 over its mean 2.5: 0.8..1.2, widened by 15%.
        has(Rule::Area(AreaRule {
            part: "part4".into(),
            min: Some(0.68),
            max: Some(1.38),
            ..Default::default()
        }));
        // The body's centroid is always (3, 1.5) of 8 x 4: (0.375, 0.375) +- 0.05.
        has(Rule::Position(PositionRule {
            part: "part1".into(),
            x: Some([0.325, 0.425]),
            y: Some([0.325, 0.425]),
            ..Default::default()
        }));
        has(Rule::Crossing(CrossingRule {
            name: None,
            part: "part1".into(),
            line: Line::Vertical,
            at: 0.5,
            equal: Some(1.0),
            min: None,
            max: None,
        }));
        // Foreground components: 4, 3, 5 and 5.
        has(Rule::Components(ComponentsRule {
            name: None,
            connectivity: Connectivity::Eight,
            min_cells: 1,
            equal: None,
            min: Some(3.0),
            max: Some(5.0),
        }));
        has(Rule::CoOccurrence(CoOccurrenceRule {
            parts: vec!["part2".into(), "part3".into()],
            equal: Some(1.0),
            ..Default::default()
        }));
        let by_class = |c: &str, n: f64| {
            (
                c.to_string(),
                ClassBounds {
                    equal: Some(n),
                    ..Default::default()
                },
            )
        };
        has(Rule::CountByClass(CountByClassRule {
            name: None,
            part: "part4".into(),
            group: vec!["part2".into(), "part3".into()],
            measure: Measure::Count,
            classes: [by_class("part2", 2.0), by_class("part3", 3.0)].into(),
        }));
        // The body is the same size with either cable: no rule ties it to the class.
        assert!(!rules
            .rules
            .iter()
            .any(|r| matches!(r, Rule::CountByClass(c) if c.part == "part1")));
        // Part 4 never has exactly 2 instances everywhere; one group means no pairs.
        assert!(!rules
            .rules
            .iter()
            .any(|r| matches!(r, Rule::Distance(_) | Rule::Pairs(_))));
    }

    #[test]
    fn learned_rules_hold_on_the_nominal_layouts_and_catch_the_anomalies() {
        let scenes = kit();
        let (rules, stats) = learn(&scenes, &LearnOptions::default());
        for scene in &scenes {
            assert_eq!(evaluate(&rules, &scene.layout(), &stats), vec![]);
        }
        // Cable part 2 with 3 clamps (the count alone, 2..3, allows it).
        let wrong_count = Scene::new(&["2.11.4.4", "..11....", "4.11....", "........"]);
        let names: Vec<String> = evaluate(&rules, &wrong_count.layout(), &stats)
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["count-by-class(part4 by part2|part3)"]);
        let both = Scene::new(&["2.11..4.", "..11....", "4.11...3", "........"]);
        let fired = evaluate(&rules, &both.layout(), &stats);
        assert!(
            fired.iter().any(|f| f.name == "co-occurrence(part2|part3)"),
            "{fired:?}"
        );
    }

    #[test]
    fn foreground_pose_is_the_centroid_and_the_long_axis() {
        // A 4x1 bar at x 2..6, y 1 of an 8x4 map: centroid (4, 1.5), horizontal axis.
        let bar = Scene::new(&["........", "..1111..", "........", "........"]);
        let pose = foreground_pose(&bar.map).unwrap();
        assert_eq!(pose.centre, (4.0 / 8.0, 1.5 / 4.0));
        assert_eq!(pose.axis, Some(0.0));
        let upright = Scene::new(&["..1.", "..1.", "..1.", "..1."]);
        let axis = foreground_pose(&upright.map).unwrap().axis.unwrap();
        assert!(
            (axis.abs() - std::f64::consts::FRAC_PI_2).abs() < 1e-12,
            "{axis}"
        );
        // A diagonal: 45 degrees (y grows downwards).
        let diagonal = Scene::new(&["1...", ".1..", "..1.", "...1"]);
        let axis = foreground_pose(&diagonal.map).unwrap().axis.unwrap();
        assert!((axis - std::f64::consts::FRAC_PI_4).abs() < 1e-12, "{axis}");
        // A square has no axis; an empty map no pose.
        assert_eq!(
            foreground_pose(&Scene::new(&["11", "11"]).map)
                .unwrap()
                .axis,
            None
        );
        assert_eq!(foreground_pose(&Scene::new(&["..", ".."]).map), None);
        // Turns between axes take the short way, modulo pi.
        assert!((axis_turn(3.0) - (3.0 - std::f64::consts::PI)).abs() < 1e-12);
        assert!((axis_turn(-0.1) + 0.1).abs() < 1e-12);
    }

    #[test]
    fn positions_are_measured_on_the_object_not_the_frame() {
        // A bar (part 1) with a pin (part 2) at its right end, the object anywhere in the frame.
        let nominal = [
            Scene::new(&["..........", ".11112....", "..........", ".........."]),
            Scene::new(&["..........", "..........", ".11112....", ".........."]),
            Scene::new(&["..........", "..11112...", "..........", ".........."]),
        ];
        let (rules, stats) = learn(&nominal, &LearnOptions::default());
        // The whole object shifted elsewhere: nothing fires.
        let shifted = Scene::new(&["..........", "..........", "..........", "....11112."]);
        assert_eq!(evaluate(&rules, &shifted.layout(), &stats), vec![]);
        // The pin at the left end instead: its position on the object is wrong.
        let moved = Scene::new(&["..........", "..........", "..21111...", ".........."]);
        let fired: Vec<String> = evaluate(&rules, &moved.layout(), &stats)
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert!(fired.contains(&"position(part2)".to_string()), "{fired:?}");
        // Without alignment (a profile from before it), the shift alone fires.
        let unaligned = ReferenceStats {
            pose: None,
            ..stats.clone()
        };
        assert!(!evaluate(&rules, &shifted.layout(), &unaligned).is_empty());
    }

    #[test]
    fn rules_that_fail_on_a_held_out_good_layout_are_left_out() {
        // Part 1 always once; part 3 once in three layouts of four, twice in the last: a count
        // learned without the last layout (exactly 1) fires on it.
        let nominal = [
            Scene::new(&["11.3....", "11......", "........"]),
            Scene::new(&["11..3...", "11......", "........"]),
            Scene::new(&["11...3..", "11......", "........"]),
            Scene::new(&["11.3..3.", "11......", "........"]),
        ];
        let layouts: Vec<FrameLayout> = nominal.iter().map(Scene::layout).collect();
        // Counts that vary learned too, so that the held-out check has one to leave out.
        let options = LearnOptions {
            stable_counts_only: false,
            ..LearnOptions::default()
        };
        let (all, _) = learn_rules(&layouts, &names(), &options).unwrap();
        let (kept, stats, unstable) =
            learn_held_out_rules(&layouts, &names(), &options, 0).unwrap();
        let names_of = |file: &RuleFile| file.rules.iter().map(Rule::name).collect::<Vec<_>>();
        assert!(names_of(&all).contains(&"count(part3)".to_string()));
        assert!(!names_of(&kept).contains(&"count(part3)".to_string()));
        assert!(names_of(&kept).contains(&"count(part1)".to_string()));
        let count3 = unstable.iter().find(|u| u.name == "count(part3)").unwrap();
        assert_eq!((count3.fired, count3.held_out), (1, 4));
        // Everything kept is learned from all layouts, holds on them and is not unstable.
        for rule in &kept.rules {
            assert!(all.rules.contains(rule));
            assert!(!unstable.iter().any(|u| u.name == rule.name()));
        }
        for layout in &layouts {
            assert_eq!(evaluate(&kept, layout, &stats), vec![]);
        }
        // A tolerance of one held-out fire keeps it; fewer than 3 layouts keep everything.
        let (tolerant, _, _) = learn_held_out_rules(&layouts, &names(), &options, 1).unwrap();
        assert!(names_of(&tolerant).contains(&"count(part3)".to_string()));
        let (two, _, none) = learn_held_out_rules(&layouts[..2], &names(), &options, 0).unwrap();
        assert_eq!(
            two,
            learn_rules(&layouts[..2], &names(), &options).unwrap().0
        );
        assert!(none.is_empty());
    }

    #[test]
    fn learns_pairs_between_groups_and_margins() {
        // Liquid (part 2 or 3) must match its label (part 4 or 5): 2 with 4, 3 with 5.
        let scenes = vec![
            Scene::new(&["1.2..4"]),
            Scene::new(&["1.2.4."]),
            Scene::new(&["1.3..5"]),
            Scene::new(&["13...5"]),
        ];
        let options = LearnOptions {
            count_slack: 1,
            ..Default::default()
        };
        let (rules, stats) = learn(&scenes, &options);
        let pairs: Vec<&PairsRule> = rules
            .rules
            .iter()
            .filter_map(|r| match r {
                Rule::Pairs(p) => Some(p),
                _ => None,
            })
            .collect();
        let pair = |a: &str, b: &str| [Some(a.to_string()), Some(b.to_string())];
        assert_eq!(pairs.len(), 1);
        assert_eq!(
            pairs[0].allowed,
            vec![pair("part2", "part4"), pair("part3", "part5")]
        );
        // With a slack of 1 a count of exactly 1 becomes 0..2.
        let count = Rule::Count(CountRule {
            part: "part1".into(),
            max: Some(2.0),
            ..Default::default()
        });
        assert!(rules.rules.contains(&count));
        let mismatch = Scene::new(&["1.2..5"]);
        let fired = evaluate(&rules, &mismatch.layout(), &stats);
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert!(fired[0].message.ends_with(
            "(part2, part5) is not an allowed pair; allowed: (part2, part4), (part3, part5)"
        ));
    }

    #[test]
    fn learn_rejects_bad_input() {
        assert_eq!(
            learn_rules(&[], &names(), &LearnOptions::default()).unwrap_err(),
            LearnError::NoLayouts
        );
        let good = Scene::new(&["1."]);
        let mut broken = Scene::new(&["1."]);
        broken.map.width = 3;
        let layouts = [good.layout(), broken.layout()];
        assert!(matches!(
            learn_rules(&layouts, &names(), &LearnOptions::default()),
            Err(LearnError::InvalidLayout { index: 1, .. })
        ));
        let options = LearnOptions {
            ratio_margin: -0.1,
            ..Default::default()
        };
        assert_eq!(
            learn_rules(&layouts[..1], &names(), &options).unwrap_err(),
            LearnError::Options("ratio_margin")
        );
    }

    #[test]
    fn written_rules_parse_back_equal() {
        let (mut rules, _) = learn(
            &kit(),
            &LearnOptions {
                category: "kit".into(),
                ..Default::default()
            },
        );
        rules.parts.insert("clamp".into(), 4);
        rules.rules.push(Rule::Count(CountRule {
            name: Some("clamps".into()),
            part: "clamp".into(),
            min: Some(2.0),
            ..Default::default()
        }));
        let text = write_rules(&rules);
        assert!(
            text.contains("\"equal\": 1,") || text.contains("\"equal\": 1\n"),
            "{text}"
        );
        assert!(
            !text.contains("1.0"),
            "counts are written as whole numbers: {text}"
        );
        let back = parse_rules(&text, Path::new("kit.json"), &names(), None).unwrap();
        assert_eq!(back, rules);
        assert_eq!(write_rules(&back), text);
        // A profile stores the rule file through the derived serde impls (no validation).
        let stored: RuleFile = serde_json::from_str(&text).unwrap();
        assert_eq!(stored, rules);
    }

    #[test]
    fn outward_rounding_never_crosses_the_value() {
        for i in 0..20_000 {
            let v = f64::from(i) * 0.000_37 - 3.0;
            let (lo, hi) = (floor3(v), ceil3(v));
            assert!(lo <= v && v <= hi, "{v}: {lo} {hi}");
            assert!(
                v - lo < 0.001 + 1e-12 && hi - v < 0.001 + 1e-12,
                "{v}: {lo} {hi}"
            );
            assert!(
                ((lo * 1000.0).round() - lo * 1000.0).abs() < 1e-6,
                "{lo} has 3 decimals"
            );
        }
        assert_eq!((floor3(0.325), ceil3(0.325)), (0.325, 0.325));
        assert_eq!(floor3(f64::INFINITY), f64::INFINITY);
    }

    #[test]
    fn template_parses_with_every_kind() {
        let text = include_str!("../../meta/template.json");
        let rules = parse_rules(text, Path::new("meta/template.json"), &names(), None).unwrap();
        let kinds: BTreeSet<&str> = rules.rules.iter().map(Rule::kind).collect();
        assert_eq!(kinds, RULE_KINDS.into_iter().collect());
        // Serialising each rule writes the kind that `kind()` reports.
        for rule in &rules.rules {
            assert_eq!(serde_json::to_value(rule).unwrap()["kind"], rule.kind());
        }
    }
}

/// Property tests: no input makes the parser, the evaluation or learning panic, and learned
/// rules hold on the layouts they were learned from. `PROPTEST_CASES` sets the number of cases
/// per property (default 256, a second or two); the long run is
/// `PROPTEST_CASES=1000000 cargo test --release --locked --lib detect::rules::fuzz`.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;
    use serde_json::Value;

    fn config() -> ProptestConfig {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256);
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    fn names() -> Vec<String> {
        (0..8).map(|i| format!("part{i}")).collect()
    }

    const WORDS: [&str; 28] = [
        "part1",
        "part2",
        "part3",
        "pins",
        "clamp",
        "wheel",
        "",
        "count",
        "area",
        "pairs",
        "count-by-class",
        "vertical",
        "four",
        "kind",
        "part",
        "min",
        "max",
        "equal",
        "x",
        "y",
        "first",
        "second",
        "allowed",
        "classes",
        "group",
        "parts",
        "at",
        "relative_to",
    ];

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-3i64..20).prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            prop::sample::select(&WORDS[..]).prop_map(Value::from),
            ".{0,6}".prop_map(Value::from),
        ]
    }

    fn json() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::Array),
                btree_map(
                    prop::sample::select(&WORDS[..]).prop_map(String::from),
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// JSON pointers of every value in `v`.
    fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
        out.push(at.clone());
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    pointers(
                        c,
                        format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                        out,
                    );
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter().enumerate() {
                    pointers(c, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Replace(usize, Value),
        Remove(usize),
        Insert(usize, String, Value),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), json()).prop_map(|(i, v)| Mutation::Replace(i, v)),
            any::<usize>().prop_map(Mutation::Remove),
            (any::<usize>(), prop::sample::select(&WORDS[..]), json())
                .prop_map(|(i, k, v)| Mutation::Insert(i, k.to_string(), v)),
        ]
    }

    fn mutate(value: &mut Value, mutation: &Mutation) {
        let mut all = Vec::new();
        pointers(value, String::new(), &mut all);
        let pick = |i: usize| all[i % all.len()].clone();
        match mutation {
            Mutation::Replace(i, v) => {
                if let Some(slot) = value.pointer_mut(&pick(*i)) {
                    *slot = v.clone();
                }
            }
            Mutation::Remove(i) => {
                let at = pick(*i);
                let Some((parent, key)) = at.rsplit_once('/') else {
                    return;
                };
                let key = key.replace("~1", "/").replace("~0", "~");
                match value.pointer_mut(parent) {
                    Some(Value::Object(m)) => {
                        m.remove(&key);
                    }
                    Some(Value::Array(a)) => {
                        if let Ok(i) = key.parse::<usize>() {
                            if i < a.len() {
                                a.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
            Mutation::Insert(i, key, v) => {
                if let Some(Value::Object(m)) = value.pointer_mut(&pick(*i)) {
                    m.insert(key.clone(), v.clone());
                }
            }
        }
    }

    /// Valid files to mutate: the template and a learned file.
    fn bases() -> Vec<Value> {
        let scenes = [
            ["2.11..4.", "..11....", "4.11....", "........"],
            ["3.11.4.4", "..11....", "4.11....", "........"],
        ];
        let grids: Vec<Grid> = scenes.iter().map(|rows| Grid::from_rows(rows)).collect();
        let layouts: Vec<FrameLayout> = grids.iter().map(Grid::layout).collect();
        let (learned, _) = learn_rules(&layouts, &names(), &LearnOptions::default()).unwrap();
        vec![
            serde_json::from_str(include_str!("../../meta/template.json")).unwrap(),
            serde_json::to_value(&learned).unwrap(),
        ]
    }

    /// A layout that owns its data.
    #[derive(Debug, Clone)]
    struct Grid {
        map: LabelMap,
        instances: Vec<Instance>,
        names: Vec<String>,
    }

    impl Grid {
        fn from_rows(rows: &[&str]) -> Grid {
            let labels = rows
                .iter()
                .flat_map(|r| r.chars().map(|c| c.to_digit(10).map_or(0, |d| d as u16)))
                .collect();
            Grid::well_formed(rows[0].len(), rows.len(), labels)
        }

        /// Instances are each part's 8-connected components, as the part stage finds them.
        fn well_formed(width: usize, height: usize, labels: Vec<u16>) -> Grid {
            let mut instances = Vec::new();
            for part in 1..10u16 {
                let mask: Vec<bool> = labels.iter().map(|&l| l == part).collect();
                for cells in components(&mask, width, height, Connectivity::Eight, 1).unwrap() {
                    let n = cells.len() as f32;
                    let x: f32 = cells
                        .iter()
                        .map(|&c| (c as usize % width) as f32 + 0.5)
                        .sum();
                    let y: f32 = cells
                        .iter()
                        .map(|&c| (c as usize / width) as f32 + 0.5)
                        .sum();
                    instances.push(Instance {
                        part,
                        cells,
                        centroid: (x / n, y / n),
                    });
                }
            }
            Grid {
                map: LabelMap {
                    width,
                    height,
                    labels,
                    background: 0,
                },
                instances,
                names: names(),
            }
        }

        fn layout(&self) -> FrameLayout<'_> {
            FrameLayout {
                labels: &self.map,
                instances: &self.instances,
                names: &self.names,
            }
        }
    }

    fn well_formed() -> impl Strategy<Value = Grid> {
        (1usize..9, 1usize..6).prop_flat_map(|(w, h)| {
            vec(0u16..6, w * h).prop_map(move |labels| Grid::well_formed(w, h, labels))
        })
    }

    fn float() -> impl Strategy<Value = f32> {
        prop_oneof![
            -2.0f32..12.0,
            Just(f32::NAN),
            Just(f32::INFINITY),
            any::<f32>()
        ]
    }

    /// Anything: label lengths that do not match, parts beyond the names, cells beyond the
    /// map, non-finite centroids, a non-zero background.
    fn garbage() -> impl Strategy<Value = Grid> {
        (0usize..7, 0usize..5, 0usize..3, 0u16..3, 0usize..9).prop_flat_map(
            |(w, h, extra, background, n_names)| {
                let instance = (0u16..12, vec(0u32..60, 0..5), float(), float()).prop_map(
                    |(part, cells, x, y)| Instance {
                        part,
                        cells,
                        centroid: (x, y),
                    },
                );
                (vec(0u16..10, w * h + extra % 2), vec(instance, 0..6)).prop_map(
                    move |(labels, instances)| Grid {
                        map: LabelMap {
                            width: w,
                            height: h,
                            labels,
                            background,
                        },
                        instances,
                        names: names().into_iter().take(n_names).collect(),
                    },
                )
            },
        )
    }

    fn stats() -> impl Strategy<Value = ReferenceStats> {
        let values = || {
            vec(
                prop::sample::select(vec![0.0, 1.0, 2.5, -1.0, f64::NAN, f64::INFINITY, 1e-300]),
                0..12,
            )
        };
        (values(), values(), values()).prop_map(|(a, i, d)| ReferenceStats {
            images: 1,
            mean_area: a,
            mean_instance_area: i,
            mean_distance: d,
            pose: None,
        })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn random_text_never_panics(text in any::<String>()) {
            let _ = parse_rules(&text, Path::new("fuzz.json"), &names(), None);
        }

        #[test]
        fn json_like_text_never_panics(text in r#"[\[\]{}":,0-9a-z .\-]{0,160}"#) {
            let _ = parse_rules(&text, Path::new("fuzz.json"), &names(), None);
        }

        #[test]
        fn mutated_files_never_panic_and_round_trip(
            base in 0usize..2,
            mutations in vec(mutation(), 1..5),
            grid in prop_oneof![well_formed(), garbage()],
            stats in stats(),
        ) {
            let mut value = bases().swap_remove(base);
            for m in &mutations {
                mutate(&mut value, m);
            }
            let text = serde_json::to_string_pretty(&value).unwrap();
            if let Ok(rules) = parse_rules(&text, Path::new("fuzz.json"), &names(), None) {
                let _ = evaluate(&rules, &grid.layout(), &stats);
                let back = parse_rules(&write_rules(&rules), Path::new("back.json"), &names(), None);
                prop_assert_eq!(back, Ok(rules));
            }
            // A rule file deserialised without validation must not panic evaluation either.
            if let Ok(rules) = serde_json::from_value::<RuleFile>(value) {
                let _ = evaluate(&rules, &grid.layout(), &stats);
            }
        }

        #[test]
        fn learned_rules_hold_on_their_own_layouts(grids in vec(well_formed(), 1..6)) {
            let layouts: Vec<FrameLayout> = grids.iter().map(Grid::layout).collect();
            let options = LearnOptions::default();
            // Layouts of different sizes are allowed: positions are relative.
            let (rules, stats) = learn_rules(&layouts, &names(), &options).unwrap();
            for layout in &layouts {
                prop_assert_eq!(evaluate(&rules, layout, &stats), vec![]);
            }
            let back = parse_rules(&write_rules(&rules), Path::new("learned.json"), &names(), None);
            prop_assert_eq!(back, Ok(rules));
        }

        #[test]
        fn learning_from_garbage_never_panics(grids in vec(garbage(), 0..4)) {
            let layouts: Vec<FrameLayout> = grids.iter().map(Grid::layout).collect();
            let _ = ReferenceStats::from_layouts(&layouts);
            if let Ok((rules, stats)) = learn_rules(&layouts, &names(), &LearnOptions::default()) {
                for layout in &layouts {
                    let _ = evaluate(&rules, layout, &stats);
                }
            }
        }
    }
}
