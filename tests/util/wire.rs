//! haul's protocol by hand, for tests that play a hostile or odd peer:
//! frames made and read with the crate's own codec, and connections from
//! other loopback addresses.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use haul::protocol::haul::{self as wire, FRAME_HEADER_LEN, Kind, MAGIC, Message};

/// The bytes of one frame carrying `message`.
pub fn frame(message: &Message<'_>) -> Vec<u8> {
    let mut bytes = Vec::new();
    wire::encode(message, &mut bytes);
    bytes
}

/// The bytes of one `Data` frame carrying `bytes`.
pub fn data_frame(bytes: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + bytes.len());
    wire::encode_data_header(Kind::Data, bytes.len() as u32, &mut frame);
    frame.extend_from_slice(bytes);
    frame
}

/// A Hello of this version asking for nothing, from an all-zero sender.
pub fn hello() -> Vec<u8> {
    frame(&Message::Hello {
        version: wire::VERSION,
        capabilities: 0,
        sender: [0; 16],
    })
}

/// One whole frame as it came off the wire: its bytes, header included.
pub fn read_raw_frame(stream: &mut TcpStream) -> Vec<u8> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    stream.read_exact(&mut header).unwrap();
    let len = wire::decode_frame_header(header).unwrap().len as usize;
    let mut bytes = header.to_vec();
    bytes.resize(FRAME_HEADER_LEN + len, 0);
    stream.read_exact(&mut bytes[FRAME_HEADER_LEN..]).unwrap();
    bytes
}

/// Reads one frame and renders its message for assertions.
pub fn read_message(stream: &mut TcpStream) -> String {
    let bytes = read_raw_frame(stream);
    let (frame, _) = wire::split_frame(&bytes).unwrap().unwrap();
    format!(
        "{:?}",
        wire::decode_message(frame.header.kind, frame.payload).unwrap()
    )
}

/// Opens a haul session on `stream`, past the Welcome.
pub fn open_session(stream: &mut TcpStream) {
    stream.write_all(&MAGIC).unwrap();
    stream.write_all(&hello()).unwrap();
    let welcome = read_message(stream);
    assert!(welcome.starts_with("Welcome"), "{welcome}");
}

/// A haul session to `addr` opened by hand, past the Welcome.
pub fn raw_haul_session(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    open_session(&mut stream);
    stream
}

/// A connection to `addr` from the loopback address `source`, so that a
/// test can be several peers at once.
pub fn connect_from(source: [u8; 4], addr: &str) -> TcpStream {
    try_connect_from(source, addr).unwrap()
}

/// [`connect_from`] for a server that may refuse: a server that resets the
/// connection at once can do so before the connect is seen to complete, and
/// then the connect itself fails with `ConnectionReset`.
pub fn try_connect_from(source: [u8; 4], addr: &str) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = addr.parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::from((source, 0)))
            .expect("bind a loopback source address");
        let stream = socket.connect(addr).await?;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    })
}
