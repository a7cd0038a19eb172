using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Weft.Hbone;
using static Weft.Tests.Hbone.HboneTestKit;

namespace Weft.Tests.Hbone;

/// <summary>HBONE over what the proxy will hand it: an SslStream after TLS 1.3 with ALPN h2 and no SNI.</summary>
public class HboneTlsTests
{
    /// <summary>A self-signed P-256 server certificate for an hour, with a key OpenSSL-backed SslStream can use.</summary>
    internal static X509Certificate2 ThrowawayCertificate()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=weft-hbone-test", key, HashAlgorithmName.SHA256);
        using X509Certificate2 ephemeral = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddHours(1));
        // A PKCS#12 round trip gives a key OpenSSL-backed SslStream can use for the server side.
        return X509CertificateLoader.LoadPkcs12(ephemeral.Export(X509ContentType.Pkcs12), null);
    }

    [Fact]
    public async Task OverTls13WithAlpnH2_TunnelEchoesAFewMiB()
    {
        using X509Certificate2 certificate = ThrowawayCertificate();
        var (clientTcp, serverTcp) = await SocketPairAsync();
        var serverTls = new SslStream(serverTcp, leaveInnerStreamOpen: false);
        var clientTls = new SslStream(clientTcp, leaveInnerStreamOpen: false);

        Task serverHandshake = serverTls.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
        {
            ServerCertificate = certificate,
            EnabledSslProtocols = SslProtocols.Tls13,
            ApplicationProtocols = [SslApplicationProtocol.Http2],
        });
        await clientTls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
        {
            TargetHost = "", // HBONE sends no SNI
            EnabledSslProtocols = SslProtocols.Tls13,
            ApplicationProtocols = [SslApplicationProtocol.Http2],
            RemoteCertificateValidationCallback = (_, presented, _, _) => presented is not null && presented.GetCertHashString() == certificate.GetCertHashString(),
        });
        await serverHandshake.WaitAsync(Patience);
        Assert.Equal(SslApplicationProtocol.Http2, clientTls.NegotiatedApplicationProtocol);
        Assert.Equal(SslProtocols.Tls13, clientTls.SslProtocol);

        using var stop = new CancellationTokenSource();
        Task server = HboneServer.RunConnectionAsync(serverTls, EchoHandler, QuietSettings, stop.Token);
        await using (HboneClientConnection client = await HboneClientConnection.StartAsync(clientTls, QuietSettings, CancellationToken.None))
        {
            HboneStream stream = await client.ConnectAsync("10.244.2.7:8080", [], CancellationToken.None).WaitAsync(Patience);
            byte[] payload = RandomNumberGenerator.GetBytes(6 * 1024 * 1024);
            Task<byte[]> echoed = ReadToEndAsync(stream.Input);
            await stream.Output.WriteAsync(payload);
            await stream.Output.CompleteAsync();
            Assert.Equal(payload, await echoed.WaitAsync(Patience));
            await stream.DisposeAsync();
        }
        await server.WaitAsync(Patience);
    }
}
