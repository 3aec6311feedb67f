//! Prints the OpenAPI document the daemon serves at `/v1/openapi.json`,
//! without a daemon: `cargo run -p spinup-api --example openapi > openapi.json`.

#[allow(clippy::print_stdout, reason = "printing the document is what this example does")]
fn main() {
    println!("{}", serde_json::to_string_pretty(&spinup_api::openapi::document()).expect("the document serializes"));
}
