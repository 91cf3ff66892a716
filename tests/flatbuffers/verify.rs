//! Replies verified with the `flatbuffers` crate's verifier, then read with its table accessors.

use flatbuffers::{
    ForwardsUOffset, InvalidFlatbuffer, Table, Vector, Verifiable, Verifier, VerifierOptions,
};

use super::schema::*;

// ---------------------------------------------------------------------------------------------
// Verifying and reading replies.

pub type Str = ForwardsUOffset<&'static str>;
pub type Ubytes = ForwardsUOffset<Vector<'static, u8>>;
pub type Entries = ForwardsUOffset<Vector<'static, ForwardsUOffset<TextEntryV>>>;
pub type VResult = Result<(), InvalidFlatbuffer>;

pub struct TextEntryV;
impl Verifiable for TextEntryV {
    fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> VResult {
        v.visit_table(pos)?
            .visit_field::<Str>("name", f(0), false)?
            .visit_field::<Str>("value", f(1), false)?
            .finish();
        Ok(())
    }
}

/// Tables of scalars only (Err.Resp, PrepareConf.Resp) and the empty body tables.
pub struct ScalarsV;
impl Verifiable for ScalarsV {
    fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> VResult {
        v.visit_table(pos)?
            .visit_field::<u32>("scalar", f(0), false)?
            .finish();
        Ok(())
    }
}

pub struct ErrV;
impl Verifiable for ErrV {
    fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> VResult {
        v.visit_table(pos)?
            .visit_field::<u8>("code", f(0), false)?
            .finish();
        Ok(())
    }
}

pub struct StopV;
impl Verifiable for StopV {
    fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> VResult {
        v.visit_table(pos)?
            .visit_field::<u16>("status", f(0), false)?
            .visit_field::<Entries>("headers", f(1), false)?
            .visit_field::<Ubytes>("body", f(2), false)?
            .finish();
        Ok(())
    }
}

pub struct RewriteV;
impl Verifiable for RewriteV {
    fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> VResult {
        v.visit_table(pos)?
            .visit_field::<Str>("path", f(0), false)?
            .visit_field::<Entries>("headers", f(1), false)?
            .visit_field::<Entries>("args", f(2), false)?
            .visit_field::<Entries>("resp_headers", f(3), false)?
            .visit_field::<Ubytes>("body", f(4), false)?
            .finish();
        Ok(())
    }
}

pub struct ReqCallRespV;
impl Verifiable for ReqCallRespV {
    fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> VResult {
        v.visit_table(pos)?
            .visit_field::<u32>("id", f(0), false)?
            .visit_union::<u8, _>(
                "action_type",
                f(1),
                "action",
                f(2),
                false,
                |t, v, p| match t {
                    ACTION_STOP => v.verify_union_variant::<ForwardsUOffset<StopV>>("Stop", p),
                    ACTION_REWRITE => {
                        v.verify_union_variant::<ForwardsUOffset<RewriteV>>("Rewrite", p)
                    }
                    other => panic!("action type {other} is not in the schema"),
                },
            )?
            .finish();
        Ok(())
    }
}

pub struct VarV;
impl Verifiable for VarV {
    fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> VResult {
        v.visit_table(pos)?
            .visit_field::<Str>("name", f(0), false)?
            .finish();
        Ok(())
    }
}

pub struct ExtraInfoReqV;
impl Verifiable for ExtraInfoReqV {
    fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> VResult {
        v.visit_table(pos)?
            .visit_union::<u8, _>("info_type", f(0), "info", f(1), true, |t, v, p| match t {
                INFO_VAR => v.verify_union_variant::<ForwardsUOffset<VarV>>("Var", p),
                INFO_REQ_BODY | INFO_RESP_BODY => {
                    v.verify_union_variant::<ForwardsUOffset<ScalarsV>>("Body", p)
                }
                other => panic!("info type {other} is not in the schema"),
            })?
            .finish();
        Ok(())
    }
}

pub struct RespCallRespV;
impl Verifiable for RespCallRespV {
    fn run_verifier(v: &mut Verifier<'_, '_>, pos: usize) -> VResult {
        v.visit_table(pos)?
            .visit_field::<u32>("id", f(0), false)?
            .visit_field::<u16>("status", f(1), false)?
            .visit_field::<Entries>("headers", f(2), false)?
            .visit_field::<Ubytes>("body", f(3), false)?
            .finish();
        Ok(())
    }
}

/// A table of a verified buffer.
#[derive(Clone, Copy)]
pub struct T<'a>(Table<'a>);

/// Verifies `buf` with root type `V` and opens its root table.
pub fn root<V: Verifiable>(buf: &[u8]) -> T<'_> {
    let opts = VerifierOptions::default();
    <ForwardsUOffset<V>>::run_verifier(&mut Verifier::new(&opts, buf), 0)
        .unwrap_or_else(|e| panic!("the runner sent an invalid buffer: {e}"));
    let loc = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
    // SAFETY: the verifier accepted the buffer with this root type.
    T(unsafe { Table::new(buf, loc) })
}

// SAFETY (every accessor): the field was visited with this type by the root's verifier.
impl<'a> T<'a> {
    pub fn u8(self, id: u16) -> u8 {
        unsafe { self.0.get::<u8>(f(id), Some(0)) }.unwrap()
    }

    pub fn u16(self, id: u16) -> u16 {
        unsafe { self.0.get::<u16>(f(id), Some(0)) }.unwrap()
    }

    pub fn u32(self, id: u16) -> u32 {
        unsafe { self.0.get::<u32>(f(id), Some(0)) }.unwrap()
    }

    pub fn str(self, id: u16) -> Option<&'a str> {
        unsafe { self.0.get::<ForwardsUOffset<&str>>(f(id), None) }
    }

    pub fn bytes(self, id: u16) -> Option<&'a [u8]> {
        unsafe { self.0.get::<ForwardsUOffset<Vector<'a, u8>>>(f(id), None) }.map(|v| v.bytes())
    }

    pub fn table(self, id: u16) -> Option<T<'a>> {
        unsafe { self.0.get::<ForwardsUOffset<Table<'a>>>(f(id), None) }.map(T)
    }

    pub fn entries(self, id: u16) -> Vec<(String, Option<String>)> {
        type V<'a> = Vector<'a, ForwardsUOffset<Table<'a>>>;
        let v = unsafe { self.0.get::<ForwardsUOffset<V<'a>>>(f(id), None) };
        v.into_iter()
            .flatten()
            .map(|e| {
                let e = T(e);
                (
                    e.str(0).unwrap_or("").to_owned(),
                    e.str(1).map(str::to_owned),
                )
            })
            .collect()
    }
}

pub fn owned(entries: &[Entry<'_>]) -> Vec<(String, Option<String>)> {
    entries
        .iter()
        .map(|(n, v)| (n.to_string(), v.map(str::to_owned)))
        .collect()
}
