//! The schema, from docs/protocol.md §7 (field ids and enum values), and requests built with raw
//! `FlatBufferBuilder` calls.

use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, TableFinishedWIPOffset, Vector, WIPOffset};

// ---------------------------------------------------------------------------------------------
// The schema, from docs/protocol.md §7: field ids and enum values.

/// The vtable offset of field `id`.
pub const fn f(id: u16) -> u16 {
    4 + 2 * id
}

pub const GET: u8 = 0;
pub const POST: u8 = 2;
pub const BAD_REQUEST: u8 = 0;
pub const CONF_TOKEN_NOT_FOUND: u8 = 2;
pub const ACTION_STOP: u8 = 1;
pub const ACTION_REWRITE: u8 = 2;
pub const INFO_VAR: u8 = 1;
pub const INFO_REQ_BODY: u8 = 2;
pub const INFO_RESP_BODY: u8 = 3;

// ---------------------------------------------------------------------------------------------
// Building requests.

/// A TextEntry: name and optional value.
pub type Entry<'a> = (&'a str, Option<&'a str>);
pub type Finished = WIPOffset<TableFinishedWIPOffset>;

pub fn text_entries<'b>(
    b: &mut FlatBufferBuilder<'b>,
    entries: &[Entry<'_>],
) -> WIPOffset<Vector<'b, ForwardsUOffset<TableFinishedWIPOffset>>> {
    let mut tables = Vec::new();
    for (name, value) in entries {
        let name = b.create_string(name);
        let value = value.map(|v| b.create_string(v));
        let start = b.start_table();
        b.push_slot_always(f(0), name);
        if let Some(value) = value {
            b.push_slot_always(f(1), value);
        }
        tables.push(b.end_table(start));
    }
    b.create_vector(&tables)
}

pub fn finish(mut b: FlatBufferBuilder<'_>, root: Finished) -> Vec<u8> {
    b.finish_minimal(root);
    b.finished_data().to_vec()
}

pub fn prepare_conf_req(key: &str, conf: &[Entry<'_>]) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let conf = text_entries(&mut b, conf);
    let key = b.create_string(key);
    let start = b.start_table();
    b.push_slot_always(f(0), conf);
    b.push_slot_always(f(1), key);
    let root = b.end_table(start);
    finish(b, root)
}

pub struct Req<'a> {
    pub id: u32,
    pub token: u32,
    pub method: u8,
    pub path: &'a str,
    pub src_ip: &'a [u8],
    pub args: &'a [Entry<'a>],
    pub headers: &'a [Entry<'a>],
}

pub fn req(id: u32, token: u32, path: &str) -> Req<'_> {
    Req {
        id,
        token,
        method: GET,
        path,
        src_ip: &[127, 0, 0, 1],
        args: &[],
        headers: &[],
    }
}

pub fn http_req_call_req(r: &Req<'_>) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let src_ip = b.create_vector(r.src_ip);
    let path = b.create_string(r.path);
    let args = text_entries(&mut b, r.args);
    let headers = text_entries(&mut b, r.headers);
    let start = b.start_table();
    b.push_slot(f(0), r.id, 0);
    b.push_slot_always(f(1), src_ip);
    b.push_slot(f(2), r.method, 0);
    b.push_slot_always(f(3), path);
    b.push_slot_always(f(4), args);
    b.push_slot_always(f(5), headers);
    b.push_slot(f(6), r.token, 0);
    let root = b.end_table(start);
    finish(b, root)
}

pub fn http_resp_call_req(id: u32, token: u32, status: u16, headers: &[Entry<'_>]) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let headers = text_entries(&mut b, headers);
    let start = b.start_table();
    b.push_slot(f(0), id, 0);
    b.push_slot(f(1), status, 0);
    b.push_slot_always(f(2), headers);
    b.push_slot(f(3), token, 0);
    let root = b.end_table(start);
    finish(b, root)
}

pub fn extra_info_resp(result: Option<&[u8]>) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let result = result.map(|r| b.create_vector(r));
    let start = b.start_table();
    if let Some(result) = result {
        b.push_slot_always(f(0), result);
    }
    let root = b.end_table(start);
    finish(b, root)
}
