using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.RegularExpressions;
using Weft.Identity;

namespace Weft.Tests.Identity;

/// <summary>The openssl CLI as an independent judge of our certificates and as a TLS peer on each side.</summary>
public class OpensslInteropTests
{
    private const string Domain = "cluster.local";
    private static readonly SpiffeId ClientId = new(Domain, "demo", "a");
    private static readonly SpiffeId ServerId = new(Domain, "demo", "b");

    private readonly TestCa _root = TestCa.Root("root");

    private static (string Cert, string Key, string Chain) WriteSvid(TempDir dir, Svid svid, string name)
    {
        var cert = dir.File($"{name}.crt");
        var key = dir.File($"{name}.key");
        var chain = dir.File($"{name}-chain.pem");
        File.WriteAllText(cert, svid.Certificate.ExportCertificatePem() + "\n");
        // Only the test writes a key to disk, so openssl can present it; the agent never does.
        File.WriteAllText(key, svid.Certificate.GetECDsaPrivateKey()!.ExportPkcs8PrivateKeyPem() + "\n");
        File.WriteAllText(chain, string.Concat(svid.Intermediates.Select(c => c.ExportCertificatePem() + "\n")));
        return (cert, key, chain);
    }

    [Fact]
    public void Svid_AsOpensslReadsIt_HasOneUriSan_CaFalse_P256_And24Hours_AndVerifies()
    {
        using var dir = new TempDir();
        var issuing = _root.Intermediate("issuing");
        var svid = new SvidIssuer().Issue(issuing.Authority(), ClientId);
        var (cert, _, chain) = WriteSvid(dir, svid, "svid");
        File.WriteAllText(dir.File("root.pem"), _root.CertificatePem);

        var text = Openssl.Ok("x509", "-in", cert, "-noout", "-text");

        Assert.Single(Regex.Matches(text, "URI:"));
        Assert.Contains("X509v3 Subject Alternative Name: critical\n                URI:spiffe://cluster.local/ns/demo/sa/a\n", text);
        Assert.Matches(@"X509v3 Basic Constraints: critical\s+CA:FALSE", text);
        Assert.Matches(@"X509v3 Key Usage: critical\s+Digital Signature\n", text);
        Assert.Contains("TLS Web Server Authentication, TLS Web Client Authentication", text);
        Assert.Contains("ASN1 OID: prime256v1", text);
        Assert.Contains("NIST CURVE: P-256", text);
        Assert.Contains("Signature Algorithm: ecdsa-with-SHA256", text);

        var dates = Openssl.Ok("x509", "-in", cert, "-noout", "-startdate", "-enddate");
        var notBefore = OpensslDate(dates, "notBefore");
        var notAfter = OpensslDate(dates, "notAfter");
        Assert.Equal(TimeSpan.FromHours(24) + SvidIssuer.Backdate, notAfter - notBefore);
        Assert.InRange(notAfter - DateTimeOffset.UtcNow, TimeSpan.FromHours(23.9), TimeSpan.FromHours(24));

        Assert.Contains(": OK", Openssl.Ok("verify", "-CAfile", dir.File("root.pem"), "-untrusted", chain, "-purpose", "sslclient", cert));
        Assert.Contains(": OK", Openssl.Ok("verify", "-CAfile", dir.File("root.pem"), "-untrusted", chain, "-purpose", "sslserver", cert));
        File.WriteAllText(dir.File("other.pem"), TestCa.Root("other").CertificatePem);
        var (code, output) = Openssl.Run("verify", "-CAfile", dir.File("other.pem"), "-untrusted", chain, cert);
        Assert.NotEqual(0, code);
        Assert.Contains("unable to get local issuer certificate", output);
    }

    [Fact]
    public async Task CaMadeWithTheOpensslCli_RsaRootAndEcIntermediate_LoadsAndIssuesSvidsForMutualTls()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("ca.cnf"), """
            [req]
            distinguished_name = dn
            [dn]
            [root]
            basicConstraints = critical,CA:true
            keyUsage = critical,keyCertSign,cRLSign
            subjectKeyIdentifier = hash
            [issuing]
            basicConstraints = critical,CA:true,pathlen:0
            keyUsage = critical,keyCertSign,cRLSign
            subjectKeyIdentifier = hash
            authorityKeyIdentifier = keyid
            """);
        // Key formats the agent meets in the wild: PKCS#1 "RSA PRIVATE KEY" and SEC1 "EC PRIVATE KEY".
        Openssl.Ok("genrsa", "-traditional", "-out", dir.File("root.key"), "2048");
        Openssl.Ok("req", "-x509", "-config", dir.File("ca.cnf"), "-extensions", "root", "-key", dir.File("root.key"),
            "-subj", "/CN=openssl-root", "-days", "2", "-out", dir.File("root.crt"));
        Openssl.Ok("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", dir.File("issuing.key"));
        Openssl.Ok("req", "-new", "-config", dir.File("ca.cnf"), "-key", dir.File("issuing.key"), "-subj", "/CN=openssl-issuing", "-out", dir.File("issuing.csr"));
        Openssl.Ok("x509", "-req", "-in", dir.File("issuing.csr"), "-CA", dir.File("root.crt"), "-CAkey", dir.File("root.key"), "-set_serial", "2",
            "-days", "2", "-extfile", dir.File("ca.cnf"), "-extensions", "issuing", "-out", dir.File("issuing.crt"));
        Assert.Contains("BEGIN RSA PRIVATE KEY", File.ReadAllText(dir.File("root.key")));
        Assert.Contains("BEGIN EC PRIVATE KEY", File.ReadAllText(dir.File("issuing.key")));

        using var identities = IdentityManager.Start(new IdentityOptions(Domain, new CaFiles(dir.File("issuing.crt"), dir.File("issuing.key"), dir.File("root.crt"))) { WatchFiles = false });
        identities.SetAllowed([ClientId, ServerId]);
        var serverSaw = new PeerReport();
        var clientSaw = new PeerReport();

        var outcome = await LoopbackTls.RunAsync(
            identities.Tls.ServerOptions(() => identities.Get(ServerId), serverSaw.Record),
            identities.Tls.ClientOptions(identities.Get(ClientId), ServerId, clientSaw.Record));

        Assert.True(outcome.Established, $"server: {serverSaw.Reason} client: {clientSaw.Reason}");
        Assert.Equal(ClientId, serverSaw.Id);
        Assert.Equal(ServerId, clientSaw.Id);
        var (cert, _, chain) = WriteSvid(dir, identities.Get(ClientId), "client");
        Assert.Contains(": OK", Openssl.Ok("verify", "-CAfile", dir.File("root.crt"), "-untrusted", chain, cert));
    }

    [Fact]
    public async Task OpensslClient_PresentingAnSvid_IsAcceptedByOurServer_OverTls13WithH2()
    {
        using var dir = new TempDir();
        var ca = _root.Intermediate("issuing").Authority();
        var issuer = new SvidIssuer();
        var (cert, key, chain) = WriteSvid(dir, issuer.Issue(ca, ClientId), "client");
        File.WriteAllText(dir.File("root.pem"), _root.CertificatePem);
        var serverSaw = new PeerReport();
        var tls = new MeshTls(new SpiffeVerifier(Domain, [_root.Certificate]));

        var (output, serverError) = await OpensslClientAgainstOurServerAsync(tls.ServerOptions(() => issuer.Issue(ca, ServerId), serverSaw.Record),
            "-CAfile", dir.File("root.pem"), "-verify_return_error", "-cert", cert, "-key", key, "-cert_chain", chain);

        Assert.Null(serverError);
        Assert.Equal(ClientId, serverSaw.Id);
        Assert.Contains("Verify return code: 0 (ok)", output);
        Assert.Contains("ALPN protocol: h2", output);
        Assert.Contains("New, TLSv1.3", output);
    }

    [Fact]
    public async Task OpensslClient_WithoutACertificate_IsRefusedByOurServer_AsNoClientCertificate()
    {
        using var dir = new TempDir();
        var ca = _root.Authority();
        var serverSaw = new PeerReport();
        var tls = new MeshTls(new SpiffeVerifier(Domain, [_root.Certificate]));

        var (_, serverError) = await OpensslClientAgainstOurServerAsync(tls.ServerOptions(() => new SvidIssuer().Issue(ca, ServerId), serverSaw.Record));

        Assert.NotNull(serverError);
        Assert.Null(serverSaw.Id);
        Assert.Equal("no client certificate", serverSaw.Reason);
    }

    [Fact]
    public async Task OpensslServer_PresentingTheExpectedSvid_IsAcceptedByOurClient_WhichSendsNoSni()
    {
        using var dir = new TempDir();
        var ca = _root.Intermediate("issuing").Authority();
        var issuer = new SvidIssuer();
        var (cert, key, chain) = WriteSvid(dir, issuer.Issue(ca, ServerId), "server");
        File.WriteAllText(dir.File("root.pem"), _root.CertificatePem);
        var tls = new MeshTls(new SpiffeVerifier(Domain, [_root.Certificate]));
        var clientSaw = new PeerReport();

        var output = await OurClientAgainstOpensslServerAsync(tls.ClientOptions(issuer.Issue(ca, ClientId), ServerId, clientSaw.Record), cert, key, chain, dir.File("root.pem"));

        Assert.Equal(ServerId, clientSaw.Id);
        Assert.Contains("hello from weft", output);
        Assert.Contains("CIPHER is TLS_", output);
        Assert.DoesNotContain("Hostname in TLS extension", output);

        // Control: with a host name SslStream does send SNI, and this openssl server prints it (it then
        // switches to its second context, which has no chain, so that handshake itself may fail).
        var named = tls.ClientOptions(issuer.Issue(ca, ClientId), ServerId);
        named.TargetHost = "b.demo.svc";
        Assert.Contains("Hostname in TLS extension: \"b.demo.svc\"", await OurClientAgainstOpensslServerAsync(named, cert, key, chain, dir.File("root.pem"), handshakeMayFail: true));
    }

    internal static async Task<(string Output, Exception? ServerError)> OpensslClientAgainstOurServerAsync(SslServerAuthenticationOptions options, params string[] clientArgs)
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        var port = ((IPEndPoint)listener.LocalEndPoint!).Port;
        var server = Task.Run(async () =>
        {
            using var socket = await listener.AcceptAsync();
            await using var tls = new SslStream(new NetworkStream(socket, ownsSocket: false));
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(15));
            await tls.AuthenticateAsServerAsync(options, timeout.Token);
            var buffer = new byte[256];
            while (await tls.ReadAsync(buffer, timeout.Token) > 0)
            {
            }
        });
        var client = Task.Run(() => Openssl.Run(["s_client", "-connect", $"127.0.0.1:{port}", "-tls1_3", "-alpn", "h2", "-noservername", .. clientArgs]));
        Exception? serverError = null;
        try
        {
            await server;
        }
        catch (Exception e)
        {
            serverError = e;
        }
        return ((await client).Output, serverError);
    }

    /// <summary>Runs openssl s_server (requiring a client certificate from the bundle) for one connection; our client says hello.</summary>
    internal static async Task<string> OurClientAgainstOpensslServerAsync(SslClientAuthenticationOptions options, string cert, string key, string chain, string rootFile, bool handshakeMayFail = false)
    {
        var info = new ProcessStartInfo("openssl") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        foreach (var a in new[]
                 {
                     "s_server", "-accept", "127.0.0.1:0", "-naccept", "1", "-tls1_3", "-alpn", "h2",
                     "-cert", cert, "-key", key, "-cert_chain", chain, "-CAfile", rootFile, "-Verify", "1", "-verify_return_error",
                     // A second context for a named host makes s_server report any SNI it receives.
                     "-servername", "b.demo.svc", "-cert2", cert, "-key2", key,
                 })
        {
            info.ArgumentList.Add(a);
        }
        using var process = Process.Start(info)!;
        var output = new StringBuilder();
        var accepting = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        void OnLine(string? line)
        {
            if (line is null)
            {
                return;
            }
            lock (output)
            {
                output.AppendLine(line);
            }
            var m = Regex.Match(line, @"^ACCEPT 127\.0\.0\.1:(\d+)");
            if (m.Success)
            {
                accepting.TrySetResult(int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture));
            }
        }
        process.OutputDataReceived += (_, e) => OnLine(e.Data);
        process.ErrorDataReceived += (_, e) => OnLine(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            var port = await accepting.Task.WaitAsync(TimeSpan.FromSeconds(10));
            using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            await socket.ConnectAsync(IPAddress.Loopback, port);
            await using var tls = new SslStream(new NetworkStream(socket, ownsSocket: false));
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(15));
            try
            {
                await tls.AuthenticateAsClientAsync(options, timeout.Token);
            }
            catch (System.Security.Authentication.AuthenticationException) when (handshakeMayFail)
            {
                await Task.Delay(300);
                return Snapshot();
            }
            Assert.Equal(SslApplicationProtocol.Http2, tls.NegotiatedApplicationProtocol);
            await tls.WriteAsync(Encoding.ASCII.GetBytes("hello from weft\n"), timeout.Token);
            await tls.FlushAsync(timeout.Token);
            var deadline = DateTime.UtcNow.AddSeconds(10);
            while (!Snapshot().Contains("hello from weft") && DateTime.UtcNow < deadline)
            {
                await Task.Delay(50);
            }
            return Snapshot();
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill();
            }
            await process.WaitForExitAsync();
        }

        string Snapshot()
        {
            lock (output)
            {
                return output.ToString();
            }
        }
    }

    private static DateTimeOffset OpensslDate(string output, string field)
    {
        var value = Regex.Match(output, field + @"=(.+)").Groups[1].Value.Trim();
        value = Regex.Replace(value, @"\s+", " ");
        return DateTimeOffset.ParseExact(value, "MMM d HH:mm:ss yyyy 'GMT'", CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal);
    }
}
