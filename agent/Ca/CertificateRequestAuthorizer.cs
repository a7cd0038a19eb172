using System.Formats.Asn1;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Weft.Identity;

namespace Weft.Ca;

/// <summary>What the CA decided about one request: the identity and key to sign for, or the reason it refused.</summary>
internal sealed record CertificateDecision
{
    public NodeIdentity? Node { get; init; }

    public SpiffeId? Identity { get; init; }

    public PublicKey? SubjectKey { get; init; }

    /// <summary>A <see cref="RefusalReason"/> when refused, else null.</summary>
    public string? Reason { get; init; }

    /// <summary>For the CA's log only: never sent to the client.</summary>
    public string? Detail { get; init; }

    public bool Allowed => Reason is null;
}

/// <summary>
/// Decides every certificate request, never trusting the node's word:
/// <code>
///   client certificate ──chain to the trust bundle, not a CA, clientAuth, one URI SAN spiffe://td/weft/node/N──► node N
///   ImpersonatedIdentity ──SPIFFE ID spiffe://td/ns/NS/sa/SA in our trust domain──► identity
///   pod index ──some pod of NS/SA scheduled on N──► allowed for N
///   CSR ──size, PKCS#10 signature verifies, exactly one subject alternative name: the URI of identity──► its public key
/// </code>
/// Everything else in the CSR (subject, other extensions) is ignored: the CA sets the certificate's contents itself.
/// </summary>
internal sealed class CertificateRequestAuthorizer
{
    private const string SubjectAltNameOid = "2.5.29.17";
    private const string ClientAuthOid = "1.3.6.1.5.5.7.3.2";
    private static readonly Asn1Tag UriTag = new(TagClass.ContextSpecific, 6);

    private readonly string _trustDomain;
    private readonly X509Certificate2Collection _trustBundle;
    private readonly X509Certificate2Collection _intermediates;
    private readonly Func<PodPlacementIndex> _placements;
    private readonly int _maxCsrBytes;
    private readonly TimeProvider _time;

    public CertificateRequestAuthorizer(string trustDomain, X509Certificate2Collection trustBundle, X509Certificate2Collection intermediates,
        Func<PodPlacementIndex> placements, int maxCsrBytes, TimeProvider? time = null)
    {
        _trustDomain = trustDomain;
        _trustBundle = trustBundle;
        _intermediates = intermediates;
        _placements = placements;
        _maxCsrBytes = maxCsrBytes;
        _time = time ?? TimeProvider.System;
    }

    public CertificateDecision Authorize(X509Certificate2? clientCertificate, string? requestedIdentity, string csrPem)
    {
        if (clientCertificate is null)
        {
            return Refuse(RefusalReason.NoClientCertificate, "the caller presented no client certificate");
        }
        var caller = NodeOf(clientCertificate);
        if (!caller.Allowed)
        {
            return caller;
        }
        var node = caller.Node!;

        if (string.IsNullOrEmpty(requestedIdentity))
        {
            return Refuse(RefusalReason.IdentityMissing, "no ImpersonatedIdentity in the request metadata", node);
        }
        if (!SpiffeId.TryParse(requestedIdentity, out var identity, out var idError))
        {
            return Refuse(RefusalReason.IdentityInvalid, $"requested identity '{Shorten(requestedIdentity)}' is not spiffe://td/ns/N/sa/S: {idError}", node);
        }
        if (identity.TrustDomain != _trustDomain)
        {
            return Refuse(RefusalReason.IdentityForeignTrustDomain, $"requested identity {identity} is not in trust domain {_trustDomain}", node);
        }
        var placements = _placements();
        if (!placements.HasPod(node.NodeName, identity.Namespace, identity.ServiceAccount))
        {
            return Refuse(RefusalReason.NoPodOnNode,
                $"no pod of {identity.Namespace}/{identity.ServiceAccount} is scheduled on node {node.NodeName} (inventory version {placements.InventoryVersion})", node);
        }

        if (csrPem.Length > _maxCsrBytes)
        {
            return Refuse(RefusalReason.CsrTooLarge, $"CSR of {csrPem.Length} bytes exceeds the limit of {_maxCsrBytes}", node);
        }
        CertificateRequest csr;
        try
        {
            // Extensions are loaded only to be inspected; the certificate is built from the public key alone.
            csr = CertificateRequest.LoadSigningRequestPem(csrPem, HashAlgorithmName.SHA256, CertificateRequestLoadOptions.UnsafeLoadCertificateExtensions);
        }
        catch (Exception e) when (e is CryptographicException or ArgumentException)
        {
            return Refuse(RefusalReason.CsrInvalid, $"CSR is not a valid, self-signed PKCS#10 request: {e.Message}", node);
        }
        if (KeyProblem(csr.PublicKey) is { } keyProblem)
        {
            return Refuse(RefusalReason.CsrInvalid, keyProblem, node);
        }

        List<string> uris;
        int otherNames;
        int sanExtensions;
        try
        {
            (uris, otherNames, sanExtensions) = Names(csr.CertificateExtensions);
        }
        catch (Exception e) when (e is AsnContentException or CryptographicException)
        {
            return Refuse(RefusalReason.CsrInvalid, $"CSR subject alternative names are malformed: {e.Message}", node);
        }
        if (sanExtensions != 1 || otherNames != 0 || uris.Count != 1)
        {
            return Refuse(RefusalReason.CsrNames,
                $"CSR must name exactly one URI and nothing else; it has {sanExtensions} SAN extensions, {uris.Count} URIs ({Shorten(string.Join(", ", uris))}) and {otherNames} other names", node);
        }
        if (!string.Equals(uris[0], identity.ToString(), StringComparison.Ordinal))
        {
            return Refuse(RefusalReason.CsrIdentityMismatch, $"CSR names {Shorten(uris[0])}, but the request is for {identity}", node);
        }
        return new CertificateDecision { Node = node, Identity = identity, SubjectKey = csr.PublicKey };
    }

    /// <summary>The node a client certificate authenticates, or why it authenticates none.</summary>
    internal CertificateDecision NodeOf(X509Certificate2 certificate)
    {
        using (var chain = new X509Chain())
        {
            chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
            chain.ChainPolicy.CustomTrustStore.AddRange(_trustBundle);
            chain.ChainPolicy.ExtraStore.AddRange(_intermediates);
            chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
            chain.ChainPolicy.DisableCertificateDownloads = true;
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

    /// <summary>Every URI and the count of other general names over all subjectAltName extensions, read with the framework's ASN.1 reader.</summary>
    private static (List<string> Uris, int OtherNames, int Extensions) Names(IEnumerable<X509Extension> extensions)
    {
        var uris = new List<string>();
        var other = 0;
        var count = 0;
        foreach (var extension in extensions)
        {
            if (extension.Oid?.Value != SubjectAltNameOid)
            {
                continue;
            }
            count++;
            var reader = new AsnReader(extension.RawData, AsnEncodingRules.DER);
            var names = reader.ReadSequence();
            reader.ThrowIfNotEmpty();
            while (names.HasData)
            {
                if (names.PeekTag().HasSameClassAndValue(UriTag))
                {
                    uris.Add(names.ReadCharacterString(UniversalTagNumber.IA5String, UriTag));
                }
                else
                {
                    names.ReadEncodedValue();
                    other++;
                }
            }
        }
        return (uris, other, count);
    }

    private static string? KeyProblem(PublicKey key)
    {
        using (var ec = key.GetECDsaPublicKey())
        {
            if (ec is not null)
            {
                return ec.KeySize is 256 or 384 ? null : $"CSR has an ECDSA key of {ec.KeySize} bits (P-256 or P-384 only)";
            }
        }
        using (var rsa = key.GetRSAPublicKey())
        {
            if (rsa is not null)
            {
                return rsa.KeySize is >= 2048 and <= 8192 ? null : $"CSR has an RSA key of {rsa.KeySize} bits (2048 to 8192 only)";
            }
        }
        return $"CSR has a {key.Oid.FriendlyName ?? key.Oid.Value} key (ECDSA or RSA only)";
    }

    private static CertificateDecision Refuse(string reason, string detail, NodeIdentity? node = null) =>
        new() { Reason = reason, Detail = detail, Node = node };

    /// <summary>Keeps what a caller sent from flooding the log.</summary>
    private static string Shorten(string value) => value.Length <= 300 ? value : value[..300] + "…";
}
