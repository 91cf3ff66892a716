//! The ext-plugin-proto v0.6.1 tables (`schema/ext-plugin.fbs`) in code: each table's field slots
//! (vtable offsets) and its verifier, written against the `flatbuffers` crate's verifier API.
//!
//! Nothing here is generated: generated FlatBuffers Rust reads through `unsafe` accessors, and
//! this crate forbids unsafe code. The verifiers below are what a `flatc`-generated
//! `run_verifier` would do; [`super::table`] then reads the verified buffer with safe code. A
//! test in the codec checks these slots against the ids in the `.fbs` file.

use ::flatbuffers::{
    ForwardsUOffset, InvalidFlatbuffer, VOffsetT, Vector, Verifiable, Verifier, VerifierOptions,
};

/// The vtable offset of the field with schema id `id`.
pub const fn slot(id: VOffsetT) -> VOffsetT {
    4 + 2 * id
}

/// Limits for incoming buffers. Strings need no NUL terminator: they are read as length-delimited
/// slices, and a gateway whose builder leaves it out is still speaking the protocol.
pub const VERIFIER_OPTIONS: VerifierOptions = VerifierOptions {
    max_depth: 8,
    // A 16 MiB payload holds at most 2 Mi of the smallest (8-byte) tables.
    max_tables: 1 << 21,
    max_apparent_size: 1 << 26,
    ignore_missing_null_terminator: true,
};

/// A `string` is verified as its bytes (length and bounds), not as UTF-8: the gateway sends what
/// clients sent (a percent-decoded `/%FF`), and the reader replaces invalid UTF-8 rather than
/// refusing the call, as the Cap'n Proto codec does.
type Str = ForwardsUOffset<Vector<'static, u8>>;
type Ubytes = ForwardsUOffset<Vector<'static, u8>>;
type Entries = ForwardsUOffset<Vector<'static, ForwardsUOffset<TextEntry>>>;

/// Declares a table: a marker type, one slot constant per field, the field list (for the schema
/// drift test) and a verifier that visits every field with its type.
macro_rules! table {
    ($(#[$doc:meta])* $name:ident = $fbs:literal { $($field:ident = $id:literal : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        pub struct $name;

        impl $name {
            $(pub const $field: VOffsetT = slot($id);)*
            #[cfg(test)]
            pub const FIELDS: (&'static str, &'static [(&'static str, VOffsetT)]) =
                ($fbs, &[$((stringify!($field), $id)),*]);
        }

        impl Verifiable for $name {
            fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> Result<(), InvalidFlatbuffer> {
                v.visit_table(pos)?
                    $(.visit_field::<$ty>(stringify!($field), $name::$field, false)?)*
                    .finish();
                Ok(())
            }
        }
    };
}

table!(
    /// `A6.TextEntry`: a name and an optional text value.
    TextEntry = "A6.TextEntry" { NAME = 0: Str, VALUE = 1: Str }
);
table!(
    /// `A6.Err.Resp`.
    ErrResp = "A6.Err.Resp" { CODE = 0: u8 }
);
table!(
    /// `A6.PrepareConf.Req`.
    PrepareConfReq = "A6.PrepareConf.Req" { CONF = 0: Entries, KEY = 1: Str }
);
table!(
    /// `A6.PrepareConf.Resp`.
    PrepareConfResp = "A6.PrepareConf.Resp" { CONF_TOKEN = 0: u32 }
);
table!(
    /// `A6.HTTPReqCall.Req`.
    HttpReqCallReq = "A6.HTTPReqCall.Req" {
        ID = 0: u32,
        SRC_IP = 1: Ubytes,
        METHOD = 2: u8,
        PATH = 3: Str,
        ARGS = 4: Entries,
        HEADERS = 5: Entries,
        CONF_TOKEN = 6: u32,
    }
);
table!(
    /// `A6.HTTPReqCall.Stop`.
    Stop = "A6.HTTPReqCall.Stop" { STATUS = 0: u16, HEADERS = 1: Entries, BODY = 2: Ubytes }
);
table!(
    /// `A6.HTTPReqCall.Rewrite`.
    Rewrite = "A6.HTTPReqCall.Rewrite" {
        PATH = 0: Str,
        HEADERS = 1: Entries,
        ARGS = 2: Entries,
        RESP_HEADERS = 3: Entries,
        BODY = 4: Ubytes,
    }
);
table!(
    /// `A6.ExtraInfo.Var`.
    Var = "A6.ExtraInfo.Var" { NAME = 0: Str }
);
table!(
    /// `A6.ExtraInfo.ReqBody` and `A6.ExtraInfo.RespBody`: empty tables.
    Empty = "A6.ExtraInfo.ReqBody" {}
);
table!(
    /// `A6.ExtraInfo.Resp`.
    ExtraInfoResp = "A6.ExtraInfo.Resp" { RESULT = 0: Ubytes }
);
table!(
    /// `A6.HTTPRespCall.Req`.
    HttpRespCallReq = "A6.HTTPRespCall.Req" {
        ID = 0: u32,
        STATUS = 1: u16,
        HEADERS = 2: Entries,
        CONF_TOKEN = 3: u32,
    }
);
table!(
    /// `A6.HTTPRespCall.Resp`.
    HttpRespCallResp = "A6.HTTPRespCall.Resp" {
        ID = 0: u32,
        STATUS = 1: u16,
        HEADERS = 2: Entries,
        BODY = 3: Ubytes,
    }
);

/// `A6.HTTPReqCall.Resp`: an id and the `Action` union (type at id 1, value at id 2).
pub struct HttpReqCallResp;

impl HttpReqCallResp {
    pub const ID: VOffsetT = slot(0);
    pub const ACTION_TYPE: VOffsetT = slot(1);
    pub const ACTION: VOffsetT = slot(2);
    /// `union Action` tags; NONE (0) means continue.
    pub const STOP: u8 = 1;
    pub const REWRITE: u8 = 2;
    #[cfg(test)]
    pub const FIELDS: (&'static str, &'static [(&'static str, VOffsetT)]) =
        ("A6.HTTPReqCall.Resp", &[("ID", 0), ("ACTION", 2)]);
}

impl Verifiable for HttpReqCallResp {
    fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<u32>("ID", Self::ID, false)?
            .visit_union::<u8, _>(
                "ACTION_TYPE",
                Self::ACTION_TYPE,
                "ACTION",
                Self::ACTION,
                false,
                |tag, v, pos| match tag {
                    Self::STOP => v.verify_union_variant::<ForwardsUOffset<Stop>>("Stop", pos),
                    Self::REWRITE => {
                        v.verify_union_variant::<ForwardsUOffset<Rewrite>>("Rewrite", pos)
                    }
                    // The reader refuses tags it does not know.
                    _ => Ok(()),
                },
            )?
            .finish();
        Ok(())
    }
}

/// `A6.ExtraInfo.Req`: the `Info` union (type at id 0, value at id 1).
pub struct ExtraInfoReq;

impl ExtraInfoReq {
    pub const INFO_TYPE: VOffsetT = slot(0);
    pub const INFO: VOffsetT = slot(1);
    /// `union Info` tags.
    pub const VAR: u8 = 1;
    pub const REQ_BODY: u8 = 2;
    pub const RESP_BODY: u8 = 3;
    #[cfg(test)]
    pub const FIELDS: (&'static str, &'static [(&'static str, VOffsetT)]) =
        ("A6.ExtraInfo.Req", &[("INFO", 1)]);
}

impl Verifiable for ExtraInfoReq {
    fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_union::<u8, _>(
                "INFO_TYPE",
                Self::INFO_TYPE,
                "INFO",
                Self::INFO,
                false,
                |tag, v, pos| match tag {
                    Self::VAR => v.verify_union_variant::<ForwardsUOffset<Var>>("Var", pos),
                    Self::REQ_BODY | Self::RESP_BODY => {
                        v.verify_union_variant::<ForwardsUOffset<Empty>>("Body", pos)
                    }
                    _ => Ok(()),
                },
            )?
            .finish();
        Ok(())
    }
}

/// Every table's schema name and `(field, id)` list, for the drift test against the `.fbs` file.
#[cfg(test)]
pub const ALL_FIELDS: &[(&str, &[(&str, VOffsetT)])] = &[
    TextEntry::FIELDS,
    ErrResp::FIELDS,
    PrepareConfReq::FIELDS,
    PrepareConfResp::FIELDS,
    HttpReqCallReq::FIELDS,
    Stop::FIELDS,
    Rewrite::FIELDS,
    HttpReqCallResp::FIELDS,
    Var::FIELDS,
    Empty::FIELDS,
    ExtraInfoReq::FIELDS,
    ExtraInfoResp::FIELDS,
    HttpRespCallReq::FIELDS,
    HttpRespCallResp::FIELDS,
];
