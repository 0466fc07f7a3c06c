//! Types of the generated wire schema (`schema.rs`).

/// A protobuf message of the Kubernetes API.
pub(crate) struct Message {
    /// The k8s-pb module path with dots, e.g. `api.core.v1`.
    pub package: &'static str,
    pub name: &'static str,
    pub special: Special,
    pub fields: &'static [Field],
}

pub(crate) struct Field {
    pub tag: u32,
    /// The Go json name.
    pub json: &'static str,
    pub ty: Ty,
    pub card: Card,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Ty {
    Str,
    Bool,
    I32,
    I64,
    F64,
    Bytes,
    /// Index into `MESSAGES`.
    Msg(usize),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Card {
    Single,
    Repeated,
    /// `map<string, ty>`.
    Map,
    /// A Go embedded struct (`json:",inline"`): its fields are merged into the parent object.
    Inline,
}

/// Messages whose JSON form is not an object of their fields.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Special {
    None,
    /// metav1.Time `{seconds, nanos}` ⇄ RFC 3339 with second precision.
    Time,
    /// metav1.MicroTime ⇄ RFC 3339 with microseconds.
    MicroTime,
    /// metav1.Duration `{duration}` (nanoseconds) ⇄ Go duration string.
    Duration,
    /// resource.Quantity `{string}` ⇄ string.
    Quantity,
    /// intstr.IntOrString `{type, intVal, strVal}` ⇄ number or string.
    IntOrString,
    /// `{raw bytes}` holding JSON (RawExtension, FieldsV1, apiextensions JSON) ⇄ embedded JSON.
    RawJson,
    /// `{repeated string items}` (ExtraValue, Verbs) ⇄ array of strings.
    StringItems,
    /// JSONSchemaPropsOrArray `{schema, JSONSchemas}` ⇄ object or array.
    SchemaOrArray,
    /// JSONSchemaPropsOrBool `{allows, schema}` ⇄ bool or object.
    SchemaOrBool,
    /// JSONSchemaPropsOrStringArray `{schema, property}` ⇄ object or array of strings.
    SchemaOrStringArray,
}
