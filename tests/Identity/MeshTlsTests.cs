using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using Weft.Identity;

namespace Weft.Tests.Identity;

/// <summary>Real TLS over loopback, SslStream on both ends, with the options <see cref="MeshTls"/> builds.</summary>
public class MeshTlsTests
{
    private const string Domain = "cluster.local";
    private static readonly SpiffeId ClientId = new(Domain, "demo", "a");
    private static readonly SpiffeId ServerId = new(Domain, "demo", "b");

    private readonly TestCa _rootA = TestCa.Root("root-a");
    private readonly SvidIssuer _issuer = new();

    private MeshTls TlsTrusting(params TestCa[] roots) =>
        new(new SpiffeVerifier(Domain, new X509Certificate2Collection(roots.Select(r => r.Certificate).ToArray())));

    private static Svid Forged(SpiffeId id, X509Certificate2 leaf, TestCa ca) => new(id, leaf, ca.Presented(), DateTimeOffset.UtcNow, "forged");

    [Fact]
    public async Task MutualTls_BetweenTwoSvids_NegotiatesTls13AndH2_AndEachSideSeesTheOther()
    {
        var ca = _rootA.Authority();
        var tls = TlsTrusting(_rootA);
        var serverSaw = new PeerReport();
        var clientSaw = new PeerReport();

        var outcome = await LoopbackTls.RunAsync(
            tls.ServerOptions(() => _issuer.Issue(ca, ServerId), serverSaw.Record),
            tls.ClientOptions(_issuer.Issue(ca, ClientId), ServerId, clientSaw.Record));

        Assert.True(outcome.Established, $"server: {outcome.ServerError?.Message} client: {outcome.ClientError?.Message}");
        Assert.Equal(SslProtocols.Tls13, outcome.Protocol);
        Assert.Equal(SslApplicationProtocol.Http2, outcome.ServerAlpn);
        Assert.Equal(SslApplicationProtocol.Http2, outcome.ClientAlpn);
        Assert.Equal(ClientId, serverSaw.Id);
        Assert.Null(serverSaw.Reason);
        Assert.Equal(1, serverSaw.Calls);
        Assert.Equal(ServerId, clientSaw.Id);
    }

    [Fact]
    public async Task MutualTls_WithIntermediateCa_SendsTheIntermediates_SoPeersTrustingOnlyTheRootAccept()
    {
        var intermediate = _rootA.Intermediate("intermediate-a").Intermediate("issuing-a");
        var ca = intermediate.Authority();
        Assert.Equal(2, ca.Intermediates.Count);
        var tls = TlsTrusting(_rootA);
        var serverSaw = new PeerReport();
        var clientSaw = new PeerReport();

        var outcome = await LoopbackTls.RunAsync(
            tls.ServerOptions(() => _issuer.Issue(ca, ServerId), serverSaw.Record),
            tls.ClientOptions(_issuer.Issue(ca, ClientId), ServerId, clientSaw.Record));

        Assert.True(outcome.Established, $"server: {serverSaw.Reason} client: {clientSaw.Reason}");
        Assert.Equal(ClientId, serverSaw.Id);
        Assert.Equal(ServerId, clientSaw.Id);
    }

    [Fact]
    public async Task Client_RefusesServer_PresentingAnotherIdentityThanExpected()
    {
        var ca = _rootA.Authority();
        var tls = TlsTrusting(_rootA);
        var clientSaw = new PeerReport();
        var expected = new SpiffeId(Domain, "demo", "c");

        var outcome = await LoopbackTls.RunAsync(
            tls.ServerOptions(() => _issuer.Issue(ca, ServerId), new PeerReport().Record),
            tls.ClientOptions(_issuer.Issue(ca, ClientId), expected, clientSaw.Record));

        Assert.False(outcome.Established);
        Assert.IsType<AuthenticationException>(outcome.ClientError);
        Assert.Null(clientSaw.Id);
        Assert.Equal($"server is {ServerId}, expected {expected}", clientSaw.Reason);
    }

    [Fact]
    public async Task Server_RefusesClient_FromAnUnrelatedCa()
    {
        var rootB = TestCa.Root("root-b");
        var serverSaw = new PeerReport();
        var clientTls = TlsTrusting(_rootA, rootB);

        var outcome = await LoopbackTls.RunAsync(
            TlsTrusting(_rootA).ServerOptions(() => _issuer.Issue(_rootA.Authority(), ServerId), serverSaw.Record),
            clientTls.ClientOptions(_issuer.Issue(rootB.Authority(), ClientId), ServerId));

        Assert.False(outcome.Established);
        Assert.Null(serverSaw.Id);
        Assert.StartsWith("unknown CA", serverSaw.Reason);
    }

    [Fact]
    public async Task Client_RefusesServer_FromAnUnrelatedCa()
    {
        var rootB = TestCa.Root("root-b");
        var clientSaw = new PeerReport();

        var outcome = await LoopbackTls.RunAsync(
            TlsTrusting(_rootA, rootB).ServerOptions(() => _issuer.Issue(rootB.Authority(), ServerId), new PeerReport().Record),
            TlsTrusting(_rootA).ClientOptions(_issuer.Issue(_rootA.Authority(), ClientId), ServerId, clientSaw.Record));

        Assert.False(outcome.Established);
        Assert.StartsWith("unknown CA", clientSaw.Reason);
    }

    public static TheoryData<string, string> ForgedClients => new()
    {
        { "expired", "certificate expired" },
        { "not-yet-valid", "certificate not valid before" },
        { "two-uri-sans", "2 URI SANs" },
        { "ca-true", "cA=true" },
        { "other-trust-domain", "trust domain evil.example is not cluster.local" },
        { "no-uri-san", "no URI SAN" },
    };

    [Theory]
    [MemberData(nameof(ForgedClients))]
    public async Task Server_RefusesClientCertificate_ThatBreaksASpiffeRule(string kind, string reason)
    {
        var now = DateTimeOffset.UtcNow;
        var id = ClientId.ToString();
        var leaf = kind switch
        {
            "expired" => _rootA.Leaf([id], notBefore: now.AddDays(-2), notAfter: now.AddDays(-1)),
            "not-yet-valid" => _rootA.Leaf([id], notBefore: now.AddDays(1), notAfter: now.AddDays(2)),
            "two-uri-sans" => _rootA.Leaf([id, "spiffe://cluster.local/ns/demo/sa/admin"]),
            "ca-true" => _rootA.Leaf([id], ca: true),
            "other-trust-domain" => _rootA.Leaf(["spiffe://evil.example/ns/demo/sa/a"]),
            "no-uri-san" => _rootA.Leaf([]),
            _ => throw new ArgumentException(kind),
        };
        var serverSaw = new PeerReport();
        var tls = TlsTrusting(_rootA);

        var outcome = await LoopbackTls.RunAsync(
            tls.ServerOptions(() => _issuer.Issue(_rootA.Authority(), ServerId), serverSaw.Record),
            tls.ClientOptions(Forged(ClientId, leaf, _rootA), ServerId));

        Assert.False(outcome.Established);
        Assert.NotNull(outcome.ServerError);
        Assert.Null(serverSaw.Id);
        Assert.StartsWith(reason, serverSaw.Reason);
    }

    [Fact]
    public async Task Client_RefusesExpiredServerCertificate()
    {
        var now = DateTimeOffset.UtcNow;
        var leaf = _rootA.Leaf([ServerId.ToString()], notBefore: now.AddDays(-2), notAfter: now.AddDays(-1));
        var clientSaw = new PeerReport();
        var tls = TlsTrusting(_rootA);

        var outcome = await LoopbackTls.RunAsync(
            tls.ServerOptions(() => Forged(ServerId, leaf, _rootA), new PeerReport().Record),
            tls.ClientOptions(_issuer.Issue(_rootA.Authority(), ClientId), ServerId, clientSaw.Record));

        Assert.False(outcome.Established);
        Assert.StartsWith("certificate expired", clientSaw.Reason);
    }

    [Fact]
    public async Task Server_RefusesClient_ThatPresentsNoCertificate()
    {
        var tls = TlsTrusting(_rootA);
        var serverSaw = new PeerReport();
        var clientOptions = tls.ClientOptions(_issuer.Issue(_rootA.Authority(), ClientId), ServerId);
        clientOptions.ClientCertificateContext = null;

        var outcome = await LoopbackTls.RunAsync(tls.ServerOptions(() => _issuer.Issue(_rootA.Authority(), ServerId), serverSaw.Record), clientOptions);

        Assert.False(outcome.Established);
        Assert.NotNull(outcome.ServerError);
        Assert.Equal("no client certificate", serverSaw.Reason);
    }

    [Fact]
    public async Task ClientHello_CarriesNoServerName_AndOffersOnlyTls13WithH2()
    {
        var hello = await CaptureClientHelloAsync(TlsTrusting(_rootA).ClientOptions(_issuer.Issue(_rootA.Authority(), ClientId), ServerId));

        Assert.DoesNotContain(ClientHello.ServerName, hello.Extensions.Keys);
        Assert.Equal(["h2"], hello.Alpn);
        Assert.Equal([0x0304], hello.SupportedVersions);
    }

    [Fact]
    public async Task ClientHello_WithAnIpTargetHost_StillCarriesNoServerName_WhileAHostNameWould()
    {
        // Control: the parser does see SNI when SslStream sends one, so its absence above means something.
        var options = TlsTrusting(_rootA).ClientOptions(_issuer.Issue(_rootA.Authority(), ClientId), ServerId);
        options.TargetHost = "b.demo.svc";
        var named = await CaptureClientHelloAsync(options);
        Assert.Contains(ClientHello.ServerName, named.Extensions.Keys);

        options = TlsTrusting(_rootA).ClientOptions(_issuer.Issue(_rootA.Authority(), ClientId), ServerId);
        options.TargetHost = "10.244.2.2";
        var ip = await CaptureClientHelloAsync(options);
        Assert.DoesNotContain(ClientHello.ServerName, ip.Extensions.Keys);
    }

    /// <summary>Accepts one connection, reads the ClientHello record SslStream sends, and hangs up.</summary>
    private static async Task<ClientHello> CaptureClientHelloAsync(SslClientAuthenticationOptions options)
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        using var clientSocket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await clientSocket.ConnectAsync(listener.LocalEndPoint!);
        using var accepted = await listener.AcceptAsync();
        await using var client = new SslStream(new NetworkStream(clientSocket, ownsSocket: false));
        var handshake = client.AuthenticateAsClientAsync(options);

        var header = new byte[5];
        await ReadExactlyAsync(accepted, header);
        Assert.Equal(0x16, header[0]); // handshake record
        var body = new byte[(header[3] << 8) | header[4]];
        await ReadExactlyAsync(accepted, body);
        accepted.Close();
        await Assert.ThrowsAnyAsync<Exception>(() => handshake);
        return ClientHello.Parse(body);
    }

    private static async Task ReadExactlyAsync(Socket socket, byte[] buffer)
    {
        var read = 0;
        while (read < buffer.Length)
        {
            var n = await socket.ReceiveAsync(buffer.AsMemory(read), SocketFlags.None);
            Assert.True(n > 0, "connection closed before the ClientHello was complete");
            read += n;
        }
    }
}

/// <summary>Just enough of a TLS ClientHello (RFC 8446 4.1.2) to see which extensions a client sent.</summary>
internal sealed record ClientHello(Dictionary<int, byte[]> Extensions)
{
    public const int ServerName = 0;
    private const int AlpnExtension = 16;
    private const int SupportedVersionsExtension = 43;

    public List<string> Alpn
    {
        get
        {
            var names = new List<string>();
            var data = Extensions[AlpnExtension];
            for (var i = 2; i < data.Length; i += 1 + data[i])
            {
                names.Add(System.Text.Encoding.ASCII.GetString(data, i + 1, data[i]));
            }
            return names;
        }
    }

    public List<int> SupportedVersions
    {
        get
        {
            var data = Extensions[SupportedVersionsExtension];
            var versions = new List<int>();
            for (var i = 1; i + 1 < data.Length; i += 2)
            {
                versions.Add((data[i] << 8) | data[i + 1]);
            }
            // GREASE values (0x?a?a) are noise a client may add.
            return versions.Where(v => (v & 0x0F0F) != 0x0A0A).ToList();
        }
    }

    public static ClientHello Parse(byte[] message)
    {
        Assert.Equal(1, message[0]); // client_hello
        var p = 4 + 2 + 32;          // type+length, legacy_version, random
        p += 1 + message[p];         // session id
        p += 2 + ((message[p] << 8) | message[p + 1]); // cipher suites
        p += 1 + message[p];         // compression methods
        var end = p + 2 + ((message[p] << 8) | message[p + 1]);
        p += 2;
        var extensions = new Dictionary<int, byte[]>();
        while (p + 4 <= end)
        {
            var type = (message[p] << 8) | message[p + 1];
            var length = (message[p + 2] << 8) | message[p + 3];
            extensions[type] = message.AsSpan(p + 4, length).ToArray();
            p += 4 + length;
        }
        return new ClientHello(extensions);
    }
}
