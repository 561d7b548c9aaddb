//! Static files (vendored htmx, CSS) embedded in the binary and served under `/static/`.

use actix_web::{web, HttpResponse};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "static/"]
struct Assets;

pub async fn serve(path: web::Path<String>) -> HttpResponse {
    match Assets::get(&path) {
        Some(file) => {
            let mime = mime_guess::from_path(path.as_str()).first_or_octet_stream();
            HttpResponse::Ok()
                .content_type(mime.as_ref())
                .insert_header(("Cache-Control", "public, max-age=3600"))
                .body(file.data.into_owned())
        }
        None => HttpResponse::NotFound().content_type("text/plain").body("no such static file"),
    }
}
