//! Label and field selectors as the API parses them from List and Watch
//! requests. Nothing may panic, and an accepted selector prints to a
//! selector that parses to the same one and matches the same labels.

#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::selector::{FieldSelector, LabelSelector};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(selector) = LabelSelector::parse(text) {
        let printed = selector.to_string();
        let again = LabelSelector::parse(&printed)
            .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which does not parse: {e}"));
        assert_eq!(again.to_string(), printed, "printing is stable for {text:?}");
        let labels: std::collections::BTreeMap<String, String> = text
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        assert_eq!(
            selector.matches(&labels),
            again.matches(&labels),
            "{text:?} and {printed:?} disagree"
        );
    }
    if let Ok(selector) = FieldSelector::parse(text) {
        let printed = selector.to_string();
        let again = FieldSelector::parse(&printed)
            .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which does not parse: {e}"));
        assert_eq!(again.to_string(), printed, "printing is stable for {text:?}");
    }
});
