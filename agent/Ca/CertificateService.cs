using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Weft.Ca.Protocol;
using Weft.Identity;

namespace Weft.Ca;

/// <summary>
/// <c>istio.v1.auth.IstioCertificateService/CreateCertificate</c>: authorizes each request with
/// <see cref="CertificateRequestAuthorizer"/>, then signs the CSR's public key as an X.509-SVID whose contents the
/// CA sets. A refusal tells the client only "permission denied"; the log and weft_ca_refused_total say why.
/// </summary>
internal sealed class CertificateService : IstioCertificateService.IstioCertificateServiceBase
{
    /// <summary>The metadata key Istio's agents and ztunnel put the requested SPIFFE ID under.</summary>
    public const string ImpersonatedIdentityKey = "ImpersonatedIdentity";

    private readonly CaService _ca;

    public CertificateService(CaService ca)
    {
        _ca = ca;
    }

    public override async Task<IstioCertificateResponse> CreateCertificate(IstioCertificateRequest request, ServerCallContext context)
    {
        var caller = new CaCaller(context.GetHttpContext().Connection.ClientCertificate, context.RequestHeaders.GetValue("authorization"), context.Peer);
        return await CreateCertificateAsync(request, caller, context.CancellationToken).ConfigureAwait(false);
    }

    /// <summary>What the CA does with one decoded request from <paramref name="caller"/>; the fuzzing harness drives it without a server.</summary>
    internal async Task<IstioCertificateResponse> CreateCertificateAsync(IstioCertificateRequest request, CaCaller caller, CancellationToken cancellationToken)
    {
        string? requested = null;
        if (request.Metadata?.Fields.TryGetValue(ImpersonatedIdentityKey, out var value) == true && value.KindCase == Google.Protobuf.WellKnownTypes.Value.KindOneofCase.StringValue)
        {
            requested = value.StringValue;
        }
        var decision = await _ca.Authorizer.AuthorizeAsync(caller, requested, request.Csr, cancellationToken).ConfigureAwait(false);
        if (!decision.Allowed)
        {
            _ca.Refuse(decision.Reason!, $"{decision.Detail} (node {decision.Node?.NodeName ?? "unknown"}, peer {caller.Peer})");
            throw decision.Transient
                ? new RpcException(new Status(StatusCode.Unavailable, "the CA cannot authenticate callers now"))
                : new RpcException(new Status(StatusCode.PermissionDenied, "permission denied"));
        }

        var lifetime = _ca.Options.MaxLifetime;
        if (request.ValidityDuration > 0 && request.ValidityDuration < lifetime.TotalSeconds)
        {
            lifetime = TimeSpan.FromSeconds(request.ValidityDuration);
        }
        // One signer for the whole answer: a rotation between signing and the chain would mix two roots.
        var signer = _ca.Signer;
        X509Certificate2 leaf;
        try
        {
            leaf = _ca.Issuer.Sign(signer.Authority, decision.Identity!, decision.SubjectKey!, lifetime);
        }
        catch (IdentityException e)
        {
            _ca.Refuse(RefusalReason.IssueFailed, $"signing {decision.Identity} for node {decision.Node!.NodeName} failed: {e.Message}");
            throw new RpcException(new Status(StatusCode.Unavailable, "the CA cannot sign now"));
        }
        using (leaf)
        {
            // Each entry ends in a newline, as Istio's CA sends them, so clients that concatenate the list get valid PEM.
            var response = new IstioCertificateResponse();
            response.CertChain.Add(leaf.ExportCertificatePem() + "\n");
            foreach (var intermediate in signer.Authority.Intermediates)
            {
                response.CertChain.Add(intermediate.ExportCertificatePem() + "\n");
            }
            response.CertChain.Add(signer.Root.ExportCertificatePem() + "\n");
            _ca.RecordIssued(decision.Node!, decision.Identity!, leaf);
            return response;
        }
    }
}
