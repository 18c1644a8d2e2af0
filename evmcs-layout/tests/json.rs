//! The JSON dump parses, is complete, and its offsets are the golden (TLFS-derived) ones.

mod golden;

use serde_json::Value;

use evmcs_layout::{json, EVMCS_SIZE, FIELD_COUNT, UNSUPPORTED_FIELDS};

fn field_table() -> Vec<Value> {
    let mut out = String::new();
    json::write_field_table(&mut out).unwrap();
    assert_eq!(
        out.lines().count(),
        FIELD_COUNT + 2,
        "one line per field plus brackets"
    );
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn everything() -> Value {
    let mut out = String::new();
    json::write_everything(&mut out).unwrap();
    serde_json::from_str(&out).unwrap()
}

fn hex(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

#[test]
fn field_table_is_complete_and_matches_golden_offsets() {
    let rows = field_table();
    assert_eq!(rows.len(), golden::fields().len());
    for &(enc, name, tlfs, offset, size, group) in &golden::fields() {
        let row = rows
            .iter()
            .find(|r| r["encoding"] == enc)
            .unwrap_or_else(|| panic!("{enc:#x} missing from the JSON"));
        assert_eq!(row["name"], name);
        assert_eq!(row["tlfs_name"].as_str(), tlfs, "{name}");
        assert_eq!(row["offset"], offset, "{name}");
        assert_eq!(hex(&row["offset_hex"]), offset as u64, "{name}");
        assert_eq!(hex(&row["encoding_hex"]), u64::from(enc), "{name}");
        assert_eq!(row["width"], size, "{name}");
        assert_eq!(row["clean_group"], group, "{name}");
        assert!(row["vmcs_name"].is_string() && row["read_only"].is_boolean());
    }
}

#[test]
fn everything_dump_covers_the_whole_layout() {
    let all = everything();
    assert_eq!(all["evmcs_size"], EVMCS_SIZE);
    assert_eq!(all["fields"].as_array().unwrap().len(), FIELD_COUNT);

    let layout = all["evmcs_layout"].as_array().unwrap();
    let mut next = 0;
    let mut kinds = std::collections::BTreeMap::new();
    for m in layout {
        assert_eq!(m["offset"], next, "{m}");
        next += m["size"].as_u64().unwrap();
        *kinds
            .entry(m["kind"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
        if m["kind"] == "vmcs" {
            assert!(
                m["encoding"].is_u64() && m["clean_group"].is_string(),
                "{m}"
            );
        }
    }
    assert_eq!(next, EVMCS_SIZE as u64);
    assert_eq!(kinds["vmcs"], FIELD_COUNT);
    assert_eq!(kinds["synthetic"], 8);

    let vp = all["vp_assist_page"].as_array().unwrap();
    let entry = vp
        .iter()
        .find(|m| m["name"] == "current_nested_vmcs")
        .unwrap();
    assert_eq!(entry["offset"], 0x30);
    assert_eq!(
        all["unsupported_vmcs_fields"].as_array().unwrap().len(),
        UNSUPPORTED_FIELDS.len()
    );
    assert_eq!(all["clean_groups"].as_array().unwrap().len(), 18);
    assert_eq!(all["version_range"]["raw"], "0x0101");
    assert_eq!(all["version_range"]["kvm_cap"], 163);
}
