//! The finalizer Lambda. Its handler lands with the AWS engine; until then the binary only
//! reports the library version it was built against.

fn main() {
    println!("s3quilt finalizer {}", s3quilt_core::VERSION);
}
