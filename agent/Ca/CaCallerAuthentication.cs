using System.Formats.Asn1;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Weft.Ca;

/// <summary>What a request tells about its caller: the TLS client certificate, the <c>authorization</c> metadata, the peer address (for the log).</summary>
internal sealed record CaCaller(X509Certificate2? ClientCertificate, string? Authorization, string Peer);

/// <summary>How the CA learns which node a caller is: the decision carries the node, or the reason it is none.</summary>
internal interface ICaCallerAuthenticator
{
    /// <summary>Whether the TLS handshake asks for a client certificate.</summary>
    bool AsksForClientCertificate { get; }

    /// <summary>For the CA's start-up log line.</summary>
    string Description { get; }

    Task<CertificateDecision> AuthenticateAsync(CaCaller caller, CancellationToken cancellationToken);
}

/// <summary>Which service accounts have a pod scheduled on which node, as the CA knows it now.</summary>
internal interface IPodPlacements
{
    /// <summary>True when at least one pod of <paramref name="namespace"/>/<paramref name="serviceAccount"/> is scheduled on <paramref name="node"/> and not finished.</summary>
    bool HasPod(string node, string @namespace, string serviceAccount);

    /// <summary>Where the answer comes from, for the log (an inventory version, a watch's resourceVersion).</summary>
    string Describe();
}

/// <summary>
/// Standalone mode: the caller's client certificate must chain to the CA's trust bundle for clientAuth, not be a
/// CA, and carry exactly one URI SAN <c>spiffe://td/weft/node/NAME</c> of our trust domain (<c>weft ca issue-node</c>).
/// The TLS handshake has proved the caller holds its key.
/// </summary>
internal sealed class NodeCertificateAuthenticator : ICaCallerAuthenticator
{
    private const string ClientAuthOid = "1.3.6.1.5.5.7.3.2";

    private readonly string _trustDomain;
    private readonly Func<Weft.Identity.CertificateAuthority> _authority;
    private readonly TimeProvider _time;

    /// <summary><paramref name="authority"/> gives the CA in force now: node certificates are judged against its trust bundle, which a rotation changes.</summary>
    public NodeCertificateAuthenticator(string trustDomain, Func<Weft.Identity.CertificateAuthority> authority, TimeProvider? time = null)
    {
        _trustDomain = trustDomain;
        _authority = authority;
        _time = time ?? TimeProvider.System;
    }

    public bool AsksForClientCertificate => true;

    public string Description => "nodes authenticated by node certificates (weft ca issue-node)";

    public Task<CertificateDecision> AuthenticateAsync(CaCaller caller, CancellationToken cancellationToken) =>
        Task.FromResult(caller.ClientCertificate is null
            ? Refuse(RefusalReason.NoClientCertificate, "the caller presented no client certificate")
            : NodeOf(caller.ClientCertificate));

    /// <summary>The node a client certificate authenticates, or why it authenticates none.</summary>
    internal CertificateDecision NodeOf(X509Certificate2 certificate)
    {
        var authority = _authority();
        using (var chain = Weft.Identity.TrustBundle.ChainTo(authority.TrustBundle, authority.Intermediates))
        {
            chain.ChainPolicy.VerificationTime = _time.GetUtcNow().UtcDateTime;
            chain.ChainPolicy.ApplicationPolicy.Add(new Oid(ClientAuthOid));
            if (!chain.Build(certificate))
            {
                var status = string.Join(", ", chain.ChainStatus.Select(s => s.Status.ToString()).Distinct());
                return Refuse(RefusalReason.NodeCertificateUntrusted, $"client certificate ({certificate.Subject}) does not chain to the CA's trust bundle for clientAuth: {status}");
            }
        }
        if (certificate.Extensions.OfType<X509BasicConstraintsExtension>().FirstOrDefault() is { CertificateAuthority: true })
        {
            return Refuse(RefusalReason.NotANodeCertificate, $"client certificate ({certificate.Subject}) is a CA certificate");
        }
        List<string> uris;
        try
        {
            (uris, _, _) = Names(certificate.Extensions);
        }
        catch (Exception e) when (e is AsnContentException or CryptographicException)
        {
            return Refuse(RefusalReason.NotANodeCertificate, $"client certificate has malformed subject alternative names: {e.Message}");
        }
        if (uris.Count != 1 || !NodeIdentity.TryParse(uris[0], out var node, out var error))
        {
            return Refuse(RefusalReason.NotANodeCertificate,
                $"client certificate does not name one node as spiffe://{_trustDomain}/weft/node/<name> (URIs: {Shorten(string.Join(", ", uris))})");
        }
        if (node.TrustDomain != _trustDomain)
        {
            return Refuse(RefusalReason.NotANodeCertificate, $"client certificate names {node}, not a node of trust domain {_trustDomain}");
        }
        return new CertificateDecision { Node = node };
    }

    private static CertificateDecision Refuse(string reason, string detail) => CertificateRequestAuthorizer.Refuse(reason, detail);

    private static string Shorten(string value) => CertificateRequestAuthorizer.Shorten(value);

    private static (List<string> Uris, int OtherNames, int Extensions) Names(IEnumerable<X509Extension> extensions) => CertificateRequestAuthorizer.Names(extensions);
}
