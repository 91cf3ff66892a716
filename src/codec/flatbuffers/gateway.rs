//! The gateway's side of the FlatBuffers codec, for the fake gateway and the replayer: encode
//! what stock APISIX sends, decode what the runner answers (its unions included).

use std::net::IpAddr;

use ::flatbuffers::VOffsetT;
use bytes::Bytes;

use super::table::Table;
use super::{decode, entries_of, read_data, read_text, schema, FlatBuffersCodec, Reason};
use crate::codec::{DecodeError, GatewayCodec, Protocol};
use crate::model::{
    ErrorCode, ExtraInfoReq, ExtraInfoResp, HttpReqCallReq, HttpReqCallResp, HttpRespCallReq,
    HttpRespCallResp, PrepareConfReq, PrepareConfResp, ReqAction, Rewrite, Stop,
};

fn read_stop(payload: &Bytes, t: &Table<'_>) -> Result<Stop, Reason> {
    use schema::Stop as S;
    Ok(Stop {
        status: t.u16(S::STATUS)?,
        headers: entries_of(payload, t, S::HEADERS)?,
        body: read_data(payload, t, S::BODY)?.unwrap_or_default(),
    })
}

fn read_rewrite(payload: &Bytes, t: &Table<'_>) -> Result<Rewrite, Reason> {
    use schema::Rewrite as S;
    Ok(Rewrite {
        path: read_text(payload, t, S::PATH)?,
        headers: entries_of(payload, t, S::HEADERS)?,
        args: entries_of(payload, t, S::ARGS)?,
        resp_headers: entries_of(payload, t, S::RESP_HEADERS)?,
        body: read_data(payload, t, S::BODY)?,
    })
}

/// The table a union's value field points to, which its tag says must be there.
fn union_value<'a>(t: &Table<'a>, slot: VOffsetT, what: &'static str) -> Result<Table<'a>, Reason> {
    t.table(slot)?
        .ok_or_else(|| format!("{what} tag without its table").into())
}

impl GatewayCodec for FlatBuffersCodec {
    fn protocol(&self) -> Protocol {
        Protocol::FlatBuffers
    }

    fn encode_prepare_conf_req(&mut self, msg: &PrepareConfReq, out: &mut Vec<u8>) {
        use schema::PrepareConfReq as S;
        self.encode(out, |c| {
            let conf = c.entries(super::items(&msg.conf));
            let key = c.fbb.create_string(&msg.key);
            let t = c.fbb.start_table();
            c.fbb.push_slot_always(S::CONF, conf);
            c.fbb.push_slot_always(S::KEY, key);
            c.fbb.end_table(t)
        });
    }

    fn encode_http_req_call_req(&mut self, msg: &HttpReqCallReq, out: &mut Vec<u8>) {
        use schema::HttpReqCallReq as S;
        self.encode(out, |c| {
            let src_ip = msg.src_ip.map(|ip| match ip {
                IpAddr::V4(v4) => c.bytes(&v4.octets()),
                IpAddr::V6(v6) => c.bytes(&v6.octets()),
            });
            let path = c.fbb.create_string(&msg.path);
            let args = c.entries(msg.args.iter().map(|e| (e.name(), e.value())));
            let headers = c.entries(msg.headers.iter().map(|e| (e.name(), e.value())));
            let t = c.fbb.start_table();
            c.fbb.push_slot(S::ID, msg.id, 0);
            if let Some(src_ip) = src_ip {
                c.fbb.push_slot_always(S::SRC_IP, src_ip);
            }
            c.fbb.push_slot_always(S::PATH, path);
            c.fbb.push_slot_always(S::ARGS, args);
            c.fbb.push_slot_always(S::HEADERS, headers);
            c.fbb.push_slot(S::CONF_TOKEN, msg.conf_token, 0);
            c.fbb.push_slot(S::METHOD, msg.method as u8, 0);
            c.fbb.end_table(t)
        });
    }

    fn encode_http_resp_call_req(&mut self, msg: &HttpRespCallReq, out: &mut Vec<u8>) {
        use schema::HttpRespCallReq as S;
        self.encode(out, |c| {
            let headers = c.entries(super::items(&msg.headers));
            let t = c.fbb.start_table();
            c.fbb.push_slot(S::ID, msg.id, 0);
            c.fbb.push_slot(S::CONF_TOKEN, msg.conf_token, 0);
            c.fbb.push_slot_always(S::HEADERS, headers);
            c.fbb.push_slot(S::STATUS, msg.status, 0);
            c.fbb.end_table(t)
        });
    }

    fn encode_extra_info_resp(&mut self, msg: &ExtraInfoResp, out: &mut Vec<u8>) {
        use schema::ExtraInfoResp as S;
        self.encode(out, |c| {
            let result = msg.result.as_ref().map(|r| c.bytes(r));
            let t = c.fbb.start_table();
            if let Some(result) = result {
                c.fbb.push_slot_always(S::RESULT, result);
            }
            c.fbb.end_table(t)
        });
    }

    fn decode_prepare_conf_resp(&self, payload: &Bytes) -> Result<PrepareConfResp, DecodeError> {
        use schema::PrepareConfResp as S;
        decode::<S, _>(payload, "PrepareConf.Resp", |t| {
            Ok(PrepareConfResp {
                conf_token: t.u32(S::CONF_TOKEN)?,
            })
        })
    }

    fn decode_http_req_call_resp(&self, payload: &Bytes) -> Result<HttpReqCallResp, DecodeError> {
        use schema::HttpReqCallResp as S;
        decode::<S, _>(payload, "HTTPReqCall.Resp", |t| {
            let action = match t.u8(S::ACTION_TYPE)? {
                0 => ReqAction::Continue,
                S::STOP => {
                    ReqAction::Stop(read_stop(payload, &union_value(&t, S::ACTION, "Stop")?)?)
                }
                S::REWRITE => ReqAction::Rewrite(read_rewrite(
                    payload,
                    &union_value(&t, S::ACTION, "Rewrite")?,
                )?),
                tag => return Err(format!("action type {tag} is not in the schema").into()),
            };
            Ok(HttpReqCallResp {
                id: t.u32(S::ID)?,
                action,
            })
        })
    }

    fn decode_http_resp_call_resp(&self, payload: &Bytes) -> Result<HttpRespCallResp, DecodeError> {
        use schema::HttpRespCallResp as S;
        decode::<S, _>(payload, "HTTPRespCall.Resp", |t| {
            Ok(HttpRespCallResp {
                id: t.u32(S::ID)?,
                status: t.u16(S::STATUS)?,
                headers: entries_of(payload, &t, S::HEADERS)?,
                body: read_data(payload, &t, S::BODY)?,
            })
        })
    }

    fn decode_extra_info_req(&self, payload: &Bytes) -> Result<ExtraInfoReq, DecodeError> {
        use schema::ExtraInfoReq as S;
        decode::<S, _>(payload, "ExtraInfo.Req", |t| match t.u8(S::INFO_TYPE)? {
            S::VAR => {
                let var = union_value(&t, S::INFO, "Var")?;
                Ok(ExtraInfoReq::Var(
                    read_text(payload, &var, schema::Var::NAME)?.unwrap_or_default(),
                ))
            }
            S::REQ_BODY => Ok(ExtraInfoReq::ReqBody),
            S::RESP_BODY => Ok(ExtraInfoReq::RespBody),
            tag => Err(format!("info type {tag} is not in the schema").into()),
        })
    }

    fn decode_error_resp(&self, payload: &Bytes) -> Result<ErrorCode, DecodeError> {
        decode::<schema::ErrResp, _>(payload, "Err.Resp", |t| {
            let code = t.u8(schema::ErrResp::CODE)?;
            ErrorCode::from_u8(code)
                .ok_or_else(|| format!("code {code} is not in the schema").into())
        })
    }
}
