//! `docs/api.md` is generated from the proto files (their comments are the
//! API reference) and this test fails when it drifts. Regenerate with
//! `UPDATE_API_DOC=1 cargo test -p llmlb-proto --test api_doc`.

use std::fmt::Write;

use prost::Message;
use prost_types::{field_descriptor_proto::Label, field_descriptor_proto::Type, FileDescriptorSet};

/// Leading comment of the element at `path`, trimmed.
fn comment(file: &prost_types::FileDescriptorProto, path: &[i32]) -> String {
    file.source_code_info
        .as_ref()
        .and_then(|info| info.location.iter().find(|l| l.path == path))
        .and_then(|l| l.leading_comments.clone())
        .map(|c| {
            c.lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn lower_camel(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn type_name(f: &prost_types::FieldDescriptorProto) -> String {
    let base = match f.r#type() {
        Type::Message | Type::Enum => f
            .type_name()
            .trim_start_matches(".llmlb.v1.")
            .trim_start_matches('.')
            .to_string(),
        Type::String => "string".into(),
        Type::Bool => "bool".into(),
        Type::Double => "double".into(),
        Type::Uint64 => "uint64 (JSON string)".into(),
        Type::Uint32 => "uint32".into(),
        Type::Int64 => "int64 (JSON string)".into(),
        Type::Int32 => "int32".into(),
        other => format!("{other:?}").to_lowercase(),
    };
    if f.label() == Label::Repeated {
        format!("repeated {base}")
    } else if f.proto3_optional() {
        format!("optional {base}")
    } else {
        base
    }
}

fn render() -> String {
    let set = FileDescriptorSet::decode(llmlb_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let mut out = String::from(
        "# API reference (`llmlb.v1`)\n\nGenerated from `proto/llmlb/v1/*.proto` by `tests/api_doc.rs`; do not edit by hand.\n\
         JSON names (REST gateway, grpcurl) are lowerCamelCase; 64-bit integers are JSON strings;\n\
         timestamps are RFC 3339 UTC; absent optional fields are omitted.\n",
    );
    let mut files: Vec<_> = set
        .file
        .iter()
        .filter(|f| f.package() == "llmlb.v1")
        .collect();
    files.sort_by_key(|f| f.name().to_string());
    for file in files {
        writeln!(out, "\n## {}\n", file.name()).unwrap();
        for (si, service) in file.service.iter().enumerate() {
            writeln!(
                out,
                "### service `{}`\n\n{}\n",
                service.name(),
                comment(file, &[6, si as i32])
            )
            .unwrap();
            for (mi, m) in service.method.iter().enumerate() {
                let stream = |s: bool| if s { "stream " } else { "" };
                writeln!(
                    out,
                    "- `{}({}{}) → {}{}`: {}",
                    m.name(),
                    stream(m.client_streaming()),
                    m.input_type().trim_start_matches(".llmlb.v1."),
                    stream(m.server_streaming()),
                    m.output_type().trim_start_matches(".llmlb.v1."),
                    comment(file, &[6, si as i32, 2, mi as i32])
                )
                .unwrap();
            }
            out.push('\n');
        }
        for (ei, e) in file.enum_type.iter().enumerate() {
            writeln!(
                out,
                "### enum `{}`\n\n{}\n",
                e.name(),
                comment(file, &[5, ei as i32])
            )
            .unwrap();
            for (vi, v) in e.value.iter().enumerate() {
                writeln!(
                    out,
                    "- `{}` = {}: {}",
                    v.name(),
                    v.number(),
                    comment(file, &[5, ei as i32, 2, vi as i32])
                )
                .unwrap();
            }
            out.push('\n');
        }
        for (mi, m) in file.message_type.iter().enumerate() {
            writeln!(
                out,
                "### message `{}`\n\n{}\n",
                m.name(),
                comment(file, &[4, mi as i32])
            )
            .unwrap();
            if m.field.is_empty() {
                out.push_str("(no fields)\n\n");
                continue;
            }
            out.push_str("| JSON name | type | meaning |\n|---|---|---|\n");
            for (fi, f) in m.field.iter().enumerate() {
                writeln!(
                    out,
                    "| `{}` | {} | {} |",
                    lower_camel(f.name()),
                    type_name(f),
                    comment(file, &[4, mi as i32, 2, fi as i32])
                )
                .unwrap();
            }
            out.push('\n');
        }
    }
    out
}

#[test]
fn api_doc_matches_the_proto_files() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md");
    let want = render();
    if std::env::var_os("UPDATE_API_DOC").is_some() {
        std::fs::write(path, &want).unwrap();
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "docs/api.md is out of date: run UPDATE_API_DOC=1 cargo test -p llmlb-proto --test api_doc"
    );
    for service in ["EndpointService", "DashboardService", "ApiKeyService"] {
        assert!(have.contains(&format!("### service `{service}`")));
    }
    assert!(have.contains("`averageResponseTimeMs` | optional double"));
}
