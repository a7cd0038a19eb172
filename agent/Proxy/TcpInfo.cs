using System.Buffers.Binary;
using System.Net.Sockets;

namespace Weft.Proxy;

/// <summary>The kernel's own view of a TCP connection: <c>getsockopt(IPPROTO_TCP, TCP_INFO)</c>.</summary>
internal static class TcpInfo
{
    private const int IpProtoTcp = 6;
    private const int TcpInfoOption = 11;

    // struct tcp_info (linux/tcp.h): __u32 tcpi_rtt at byte 68, tcpi_rttvar at 72, both microseconds.
    private const int RttOffset = 68;
    private const int RttVarOffset = 72;

    /// <summary>
    /// The smoothed round-trip time and its variation, or null when the socket is closed, not TCP,
    /// or the kernel has no sample yet (rtt 0).
    /// </summary>
    public static (TimeSpan Rtt, TimeSpan RttVar)? TryRead(Socket socket)
    {
        Span<byte> info = stackalloc byte[RttVarOffset + 4];
        int length;
        try
        {
            length = socket.GetRawSocketOption(IpProtoTcp, TcpInfoOption, info);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or PlatformNotSupportedException)
        {
            return null;
        }

        if (length < RttVarOffset + 4)
        {
            return null;
        }

        var rtt = BinaryPrimitives.ReadUInt32LittleEndian(info[RttOffset..]);
        var rttVar = BinaryPrimitives.ReadUInt32LittleEndian(info[RttVarOffset..]);
        return rtt == 0 ? null : (TimeSpan.FromMicroseconds(rtt), TimeSpan.FromMicroseconds(rttVar));
    }
}
