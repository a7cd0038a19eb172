using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;

namespace Weft.Identity;

/// <summary>
/// TLS settings for mesh tunnels (HBONE on 15008): TLS 1.3 only, ALPN "h2", both sides present an
/// X.509-SVID with its intermediates, and each side checks the other with <see cref="SpiffeVerifier"/>
/// instead of the platform's trust store. No SNI: a pod has no host name and RFC 6066 forbids an IP there.
/// Session resumption is off so every handshake verifies (and reports) the peer's certificate.
/// A client leaf must allow clientAuth, a server leaf serverAuth (see <see cref="SpiffeVerifier"/>).
/// SslStream's own chain is built against the trust bundle too, so the policy errors it reports name the real
/// fault (unknown CA, expired, wrong usage): runtimes that turn them into TLS alerts send the matching one.
/// .NET 10 on Linux sends no alert at all when a certificate is refused (docs/identity.md).
/// </summary>
internal sealed class MeshTls
{
    private static readonly List<SslApplicationProtocol> Alpn = [SslApplicationProtocol.Http2];

    private readonly Func<SpiffeVerifier> _verifier;

    /// <param name="currentVerifier">Read for every connection's options, so a reloaded trust bundle applies to the next connection.</param>
    public MeshTls(Func<SpiffeVerifier> currentVerifier)
    {
        _verifier = currentVerifier;
    }

    public MeshTls(SpiffeVerifier verifier)
        : this(() => verifier)
    {
    }

    /// <summary>
    /// Options for one inbound connection. <paramref name="serverSvid"/> is called now (build options per
    /// accepted connection, so a renewed SVID is used from the next one on). <paramref name="onPeerVerified"/>
    /// is called once during the handshake with the client's identity, or with null and the reason it was refused.
    /// </summary>
    public SslServerAuthenticationOptions ServerOptions(Func<Svid> serverSvid, Action<SpiffeId?, string?> onPeerVerified)
    {
        var svid = serverSvid();
        var current = _verifier();
        return new SslServerAuthenticationOptions
        {
            EnabledSslProtocols = SslProtocols.Tls13,
            ApplicationProtocols = Alpn,
            ServerCertificateContext = svid.Context,
            ClientCertificateRequired = true,
            CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
            AllowRenegotiation = false,
            AllowTlsResume = false,
            CertificateChainPolicy = ChainPolicy(current),
            RemoteCertificateValidationCallback = (_, certificate, chain, _) =>
            {
                var result = certificate is null
                    ? SpiffeVerification.Refused("no client certificate")
                    : Check(current, certificate, chain, TlsPeerRole.Client);
                onPeerVerified(result.Id, result.Reason);
                return result.Verified;
            },
        };
    }

    /// <summary>
    /// Options for one outbound connection presenting <paramref name="clientSvid"/>; the handshake succeeds only
    /// when the server proves to be <paramref name="expectedServer"/>. <paramref name="onServerVerified"/>, when given,
    /// receives the server's identity or the reason it was refused (SslStream's own exception does not say).
    /// </summary>
    public SslClientAuthenticationOptions ClientOptions(Svid clientSvid, SpiffeId expectedServer, Action<SpiffeId?, string?>? onServerVerified = null)
    {
        var current = _verifier();
        return new SslClientAuthenticationOptions
        {
            // Empty target host: SslStream then sends no server_name extension at all.
            TargetHost = string.Empty,
            EnabledSslProtocols = SslProtocols.Tls13,
            ApplicationProtocols = Alpn,
            ClientCertificateContext = clientSvid.Context,
            CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
            AllowRenegotiation = false,
            AllowTlsResume = false,
            CertificateChainPolicy = ChainPolicy(current),
            RemoteCertificateValidationCallback = (_, certificate, chain, _) =>
            {
                var result = certificate is null
                    ? SpiffeVerification.Refused("server presented no certificate")
                    : Check(current, certificate, chain, TlsPeerRole.Server);
                if (result.Id is { } id && id != expectedServer)
                {
                    result = SpiffeVerification.Refused($"server is {id}, expected {expectedServer}");
                }
                onServerVerified?.Invoke(result.Id, result.Reason);
                return result.Verified;
            },
        };
    }

    /// <summary>Ignores the platform's verdict; the chain's extra store holds what the peer sent after its leaf.</summary>
    private static SpiffeVerification Check(SpiffeVerifier current, X509Certificate certificate, X509Chain? chain, TlsPeerRole role)
    {
        using var owned = certificate as X509Certificate2 is null ? new X509Certificate2(certificate) : null;
        var leaf = owned ?? (X509Certificate2)certificate;
        return current.Verify(leaf, chain?.ChainPolicy.ExtraStore, role);
    }

    /// <summary>
    /// The policy SslStream builds its own chain with (it adds the peer's EKU itself): our roots instead of the
    /// system store, so its policy errors, and any alert a runtime derives from them, match the verifier's reason.
    /// One per connection, as SslStream adds the peer's intermediates to its extra store.
    /// </summary>
    private static X509ChainPolicy ChainPolicy(SpiffeVerifier current)
    {
        var policy = new X509ChainPolicy
        {
            TrustMode = X509ChainTrustMode.CustomRootTrust,
            RevocationMode = X509RevocationMode.NoCheck,
            DisableCertificateDownloads = true,
        };
        policy.CustomTrustStore.AddRange(current.TrustBundle);
        return policy;
    }
}
