//! Loopback addresses for test clusters: each cluster gets its own random 127.x.y.0/24 so
//! parallel tests never collide, and ports come from the kernel.

use std::net::{Ipv4Addr, TcpListener};

pub struct Subnet {
    prefix: [u8; 3],
}

impl Subnet {
    pub fn random() -> Subnet {
        let r: u32 = rand::random();
        Subnet { prefix: [127, (r % 250 + 2) as u8, ((r >> 8) % 250 + 2) as u8] }
    }

    pub fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], host)
    }

    /// `ip:port` with a port that was free a moment ago.
    pub fn free_addr(&self, host: u8) -> String {
        let ip = self.ip(host);
        let listener = TcpListener::bind((ip, 0)).expect("bind a loopback port");
        let port = listener.local_addr().expect("local addr").port();
        format!("{ip}:{port}")
    }
}
