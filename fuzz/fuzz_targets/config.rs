//! The key loaders on anything: a TOML key file and key variables (`GEMINI_API_KEY`,
//! `GOOGLE_API_KEY_n`, `API_KEY_RANGE`, …). Never a panic, and an error never shows a key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_gemini::KeyPool;

/// Does `shown` hold a key-like value of `vars`?
fn shows_a_key(shown: &str, vars: &[(String, String)]) -> bool {
    vars.iter().any(|(name, value)| {
        let value = value.trim();
        // Long enough to be told apart from the message's own words.
        let holds_keys = name == "GEMINI_API_KEY" || name.starts_with("GOOGLE_API_KEY");
        // A message may quote another variable's value, whatever it holds.
        let quoted_elsewhere = vars.iter().any(|(other, v)| other != name && v.contains(value));
        holds_keys && !quoted_elsewhere && value.len() >= 16 && !value.contains(',') && shown.contains(value)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(builder) = KeyPool::builder().toml_str(text) {
        let _ = builder.build();
    }
    // Lines of NAME=value, as the environment.
    let vars: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let built = KeyPool::builder()
        .keys_from_vars(vars.clone())
        .and_then(|builder| builder.build());
    match built {
        Ok(pool) => {
            let shown = format!("{pool:?}");
            assert!(!shows_a_key(&shown, &vars), "{shown}");
        }
        Err(error) => {
            let shown = format!("{error} {error:?}");
            assert!(!shows_a_key(&shown, &vars), "{shown}");
        }
    }
});
