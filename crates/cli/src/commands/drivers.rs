//! `spinup drivers`: the drivers and their capability matrix.

use anyhow::Result;
use spinup_api::Capabilities;

use crate::ctx::Ctx;
use crate::output::table;

pub async fn run(ctx: &Ctx) -> Result<()> {
    let v = ctx.client.get("/v1/drivers").await?;
    ctx.emit(&v, |drivers: Vec<Capabilities>| {
        let yn = |b: bool| if b { "yes" } else { "no" }.to_string();
        let rows = drivers
            .iter()
            .map(|d| {
                let isolation = serde_json::to_value(d.isolation).ok().and_then(|i| i.as_str().map(String::from));
                let mut r = vec![
                    d.driver.clone(),
                    yn(d.available),
                    isolation.unwrap_or_default(),
                    d.backend.clone().unwrap_or_else(|| "-".into()),
                ];
                for cap in Capabilities::NAMES {
                    r.push(yn(d.get(cap) == Some(true)));
                }
                r
            })
            .collect();
        let mut headers = vec!["DRIVER", "AVAILABLE", "ISOLATION", "BACKEND"];
        headers.extend(Capabilities::NAMES);
        table(&headers, rows);
        for d in &drivers {
            if let Some(r) = &d.reason {
                println!("{}: {r}", d.driver);
            }
        }
    })
}
