using System.Net;
using System.Net.Sockets;
using Weft.Hbone;
using Weft.Identity;
using Weft.Proxy;
using Weft.Telemetry;

namespace Weft.Tests.Proxy;

/// <summary>The response flags users see in flows and metrics, and which failure gets which.</summary>
public class ProxyErrorTests
{
    private static readonly IPEndPoint Destination = IPEndPoint.Parse("10.244.2.2:8080");

    public static TheoryData<string, string, string> Kinds() => new()
    {
        { nameof(ProxyErrorKind.Denied), "DENY", "denied" },
        { nameof(ProxyErrorKind.NoHealthyUpstream), "UH", "error" },
        { nameof(ProxyErrorKind.UpstreamConnectFailure), "UF", "error" },
        { nameof(ProxyErrorKind.Overflow), "UO", "error" },
        { nameof(ProxyErrorKind.TlsFailure), "TLS_FAILURE", "error" },
        { nameof(ProxyErrorKind.ConnectFailure), "CONNECT", "error" },
        { nameof(ProxyErrorKind.Loop), "LOOP", "error" },
        { nameof(ProxyErrorKind.IdleTimeout), "IDLE_TIMEOUT", "forwarded" },
        { nameof(ProxyErrorKind.UpstreamTermination), "UC", "error" },
        { nameof(ProxyErrorKind.DownstreamTermination), "DC", "error" },
        { nameof(ProxyErrorKind.NoCertificate), "NO_CERTIFICATE", "error" },
    };

    [Theory]
    [MemberData(nameof(Kinds))]
    public void EveryKind_HasTheFlagUsersSee_AndItsVerdict(string kindName, string flag, string verdict)
    {
        var kind = Enum.Parse<ProxyErrorKind>(kindName);
        var flow = new Flow(FlowDirection.Outbound, IPEndPoint.Parse("10.244.1.2:40000"), Destination);

        flow.Record(new ProxyError(kind, "because"));

        Assert.Equal(flag, flow.ResponseFlags);
        Assert.Equal("because", flow.Error);
        Assert.Equal(verdict, flow.Verdict);
    }

    [Fact]
    public void EveryKind_IsInTheTable()
    {
        Assert.Equal(Enum.GetValues<ProxyErrorKind>().Order(), Kinds().Select(row => Enum.Parse<ProxyErrorKind>((string)row[0])).Order());
        Assert.Equal(Enum.GetValues<ProxyErrorKind>().Length, Enum.GetValues<ProxyErrorKind>().Select(ResponseFlag.Of).Distinct().Count());
    }

    [Fact]
    public void Flags_AreTheSameInstanceEveryTime_SoTheMetricsCacheHits()
    {
        // MeshMetrics compares a flow's flags by reference to reuse its series.
        Assert.Same(ResponseFlag.Of(ProxyErrorKind.Denied), new ProxyError(ProxyErrorKind.Denied, "x").Flag);
    }

    public static TheoryData<Exception, string, string> TunnelFailures() => new()
    {
        { new TunnelException("TLS to 10.244.2.2:15008 as spiffe://x: peer is not spiffe://y", isTls: true), "TLS_FAILURE", "peer is not spiffe://y" },
        { new TunnelException("TLS to 10.244.2.2:15008: connection reset", isTls: false), "UF", "tunnel to 10.244.2.2:8080: TLS to 10.244.2.2:15008: connection reset" },
        { new HboneException("refused", statusCode: 403), "DENY", "10.244.2.2:8080 refused the tunnel: not authorized" },
        { new HboneException("CONNECT refused with 503", statusCode: 503), "CONNECT", "tunnel to 10.244.2.2:8080: CONNECT refused with 503" },
        { new HboneException("connection lost", inner: new IOException("broken pipe")), "CONNECT", "tunnel to 10.244.2.2:8080: connection lost: broken pipe" },
        { new SocketException((int)SocketError.ConnectionRefused), "UF", "tunnel to 10.244.2.2:8080: " },
        { new OperationCanceledException(), "UF", "tunnel to 10.244.2.2:8080: timed out" },
        { new TaskCanceledException(), "UF", "tunnel to 10.244.2.2:8080: timed out" },
        { new IdentityException("no certificate for spiffe://x"), "UF", "tunnel to 10.244.2.2:8080: no certificate for spiffe://x" },
        { new IdentityException("no certificate for spiffe://x yet: the CA service did not answer") { CertificateUnavailable = true }, "NO_CERTIFICATE", "no certificate for spiffe://x yet" },
    };

    [Theory]
    [MemberData(nameof(TunnelFailures))]
    public void TunnelFailure_MapsToItsFlag_WithAReasonNamingTheDestination(Exception failure, string flag, string reason)
    {
        var error = ProxyError.OfTunnelFailure(failure, Destination);

        Assert.NotNull(error);
        Assert.Equal(flag, error.Flag);
        Assert.Contains(reason, error.Reason);
    }

    [Fact]
    public void OtherExceptions_AreNotTunnelFailures_AndPropagate()
    {
        Assert.Null(ProxyError.OfTunnelFailure(new InvalidOperationException("bug"), Destination));
        Assert.Null(ProxyError.OfTunnelFailure(new IOException("disk"), Destination));
    }

    [Fact]
    public void ConnectFailure_IsUF_NamingTheDestinationAndTheSocketError()
    {
        var error = ProxyError.OfConnectFailure(new SocketException((int)SocketError.ConnectionRefused), Destination);

        Assert.Equal("UF", error.Flag);
        Assert.Equal("connect 10.244.2.2:8080: ConnectionRefused", error.Reason);
    }
}
