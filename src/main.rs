fn main() {
    println!("maskserve: under construction");
}
