#!/usr/bin/env bash
# One-time AWS setup for the CI workflows (README: "CI environments"). Creates, or updates in
# place when run again:
#   - the Pulumi state bucket: private, versioned, encrypted, TLS only;
#   - GitHub's OIDC identity provider, so workflows get short-lived credentials and no key is stored;
#   - three roles, each assumable only by this repository in one context (the token's `sub`):
#       gha-sdxl-endpoint-preview  the `preview` environment (preview.yml): read-only
#       gha-sdxl-endpoint-review   the `review` environment (review-env.yml, reaper.yml): deploys,
#                                  but writes only the state of pr-<n> stacks
#       gha-sdxl-endpoint-deploy   the `production` environment (deploy.yml)
#
#   ci/bootstrap/aws-oidc.sh OWNER/REPO BUCKET [REGION]
#
# Needs the AWS CLI v2 and an administrator's credentials, once. It prints the repository
# variables to set. For hard isolation between PR endpoints and production, run it in a
# separate AWS account for the review role.
set -euo pipefail

usage="usage: $0 OWNER/REPO BUCKET [REGION]"
repo=${1:?$usage}
bucket=${2:?$usage}
region=${3:-us-east-1}
project=sdxl-endpoint   # Pulumi project name (Pulumi.yaml)
prefix=gha-sdxl-endpoint  # never matches the sdxl-* names the program gives its own IAM resources

[[ $repo =~ ^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$ ]] || { echo "OWNER/REPO expected, got '$repo'" >&2; exit 2; }
[[ $bucket =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]] || { echo "not an S3 bucket name: '$bucket'" >&2; exit 2; }
[[ $region =~ ^[a-z]{2}(-gov)?-[a-z]+-[0-9]$ ]] || { echo "not an AWS region: '$region'" >&2; exit 2; }
command -v aws >/dev/null || { echo "the AWS CLI v2 is required" >&2; exit 1; }

account=$(aws sts get-caller-identity --query Account --output text)
oidc_host=token.actions.githubusercontent.com
provider_arn="arn:aws:iam::$account:oidc-provider/$oidc_host"

echo "==> state bucket s3://$bucket ($region)"
if ! aws s3api head-bucket --bucket "$bucket" 2>/dev/null; then
  if [ "$region" = us-east-1 ]; then
    aws s3api create-bucket --bucket "$bucket" --region "$region" >/dev/null
  else
    aws s3api create-bucket --bucket "$bucket" --region "$region" \
      --create-bucket-configuration "LocationConstraint=$region" >/dev/null
  fi
fi
aws s3api put-public-access-block --bucket "$bucket" --public-access-block-configuration \
  BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
# Versioning keeps every checkpoint: a bad update or a deleted stack can be recovered.
aws s3api put-bucket-versioning --bucket "$bucket" --versioning-configuration Status=Enabled
aws s3api put-bucket-encryption --bucket "$bucket" --server-side-encryption-configuration \
  '{"Rules":[{"ApplyServerSideEncryptionByDefault":{"SSEAlgorithm":"AES256"},"BucketKeyEnabled":true}]}'
aws s3api put-bucket-policy --bucket "$bucket" --policy "$(cat <<JSON
{"Version":"2012-10-17","Statement":[{"Sid":"TlsOnly","Effect":"Deny","Principal":"*","Action":"s3:*",
 "Resource":["arn:aws:s3:::$bucket","arn:aws:s3:::$bucket/*"],
 "Condition":{"Bool":{"aws:SecureTransport":"false"}}}]}
JSON
)"
# The backend's layout marker, written here so that the review role never needs to write it.
if ! aws s3api head-object --bucket "$bucket" --key .pulumi/meta.yaml >/dev/null 2>&1; then
  printf 'version: 1\n' | aws s3 cp - "s3://$bucket/.pulumi/meta.yaml" >/dev/null
fi

echo "==> OIDC provider $oidc_host"
if ! aws iam get-open-id-connect-provider --open-id-connect-provider-arn "$provider_arn" >/dev/null 2>&1; then
  aws iam create-open-id-connect-provider --url "https://$oidc_host" --client-id-list sts.amazonaws.com >/dev/null
fi

# trust_policy SUB...: only GitHub tokens for this audience whose subject is one of SUB.
trust_policy() {
  local subs
  subs=$(for s in "$@"; do printf '"repo:%s:%s",' "$repo" "$s"; done | sed 's/,$//')
  cat <<JSON
{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sts:AssumeRoleWithWebIdentity",
 "Principal":{"Federated":"$provider_arn"},
 "Condition":{"StringEquals":{"$oidc_host:aud":"sts.amazonaws.com","$oidc_host:sub":[$subs]}}}]}
JSON
}

# What `pulumi preview` reads: the state, and the look-ups the program makes.
read_statements=$(cat <<JSON
{"Sid":"StateRead","Effect":"Allow","Action":["s3:ListBucket","s3:GetBucketLocation","s3:GetObject"],
 "Resource":["arn:aws:s3:::$bucket","arn:aws:s3:::$bucket/*"]},
{"Sid":"StateLocks","Effect":"Allow","Action":["s3:PutObject","s3:DeleteObject"],
 "Resource":"arn:aws:s3:::$bucket/.pulumi/locks/*"},
{"Sid":"LookUps","Effect":"Allow","Action":["ec2:Describe*","iam:GetRole","iam:GetInstanceProfile",
 "iam:ListAttachedRolePolicies","iam:ListRolePolicies","iam:ListInstanceProfilesForRole",
 "servicequotas:GetServiceQuota"],"Resource":"*"},
{"Sid":"DeepLearningAmi","Effect":"Allow","Action":["ssm:GetParameter","ssm:GetParameters"],
 "Resource":"arn:aws:ssm:*::parameter/aws/service/*"}
JSON
)

# What `pulumi up` and `destroy` change: the stack's network, its GPU instance in this region,
# and the instance's own role, which may hold only the SSM Session Manager policy.
deploy_statements=$(cat <<JSON
{"Sid":"Ec2InRegion","Effect":"Allow","Action":["ec2:CreateVpc","ec2:DeleteVpc","ec2:ModifyVpcAttribute",
 "ec2:CreateInternetGateway","ec2:DeleteInternetGateway","ec2:AttachInternetGateway",
 "ec2:DetachInternetGateway","ec2:CreateSubnet","ec2:DeleteSubnet","ec2:ModifySubnetAttribute",
 "ec2:CreateRouteTable","ec2:DeleteRouteTable","ec2:CreateRoute","ec2:DeleteRoute","ec2:ReplaceRoute",
 "ec2:AssociateRouteTable","ec2:DisassociateRouteTable","ec2:CreateSecurityGroup",
 "ec2:DeleteSecurityGroup","ec2:AuthorizeSecurityGroupIngress","ec2:AuthorizeSecurityGroupEgress",
 "ec2:RevokeSecurityGroupIngress","ec2:RevokeSecurityGroupEgress",
 "ec2:UpdateSecurityGroupRuleDescriptionsIngress","ec2:UpdateSecurityGroupRuleDescriptionsEgress",
 "ec2:AllocateAddress","ec2:ReleaseAddress","ec2:AssociateAddress","ec2:DisassociateAddress",
 "ec2:RunInstances","ec2:TerminateInstances","ec2:StartInstances","ec2:StopInstances",
 "ec2:ModifyInstanceAttribute","ec2:ModifyInstanceMetadataOptions","ec2:CreateTags","ec2:DeleteTags"],
 "Resource":"*","Condition":{"StringEquals":{"aws:RequestedRegion":"$region"}}},
{"Sid":"InstanceRole","Effect":"Allow","Action":["iam:CreateRole","iam:DeleteRole","iam:TagRole",
 "iam:UntagRole","iam:UpdateRole","iam:UpdateRoleDescription","iam:UpdateAssumeRolePolicy",
 "iam:CreateInstanceProfile","iam:DeleteInstanceProfile","iam:TagInstanceProfile",
 "iam:UntagInstanceProfile","iam:AddRoleToInstanceProfile","iam:RemoveRoleFromInstanceProfile"],
 "Resource":["arn:aws:iam::$account:role/sdxl-role-*","arn:aws:iam::$account:instance-profile/sdxl-profile-*"]},
{"Sid":"OnlySsmPolicy","Effect":"Allow","Action":["iam:AttachRolePolicy","iam:DetachRolePolicy"],
 "Resource":"arn:aws:iam::$account:role/sdxl-role-*",
 "Condition":{"ArnEquals":{"iam:PolicyARN":"arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"}}},
{"Sid":"PassOnlyToEc2","Effect":"Allow","Action":"iam:PassRole","Resource":"arn:aws:iam::$account:role/sdxl-role-*",
 "Condition":{"StringEquals":{"iam:PassedToService":"ec2.amazonaws.com"}}},
{"Sid":"SpotServiceRole","Effect":"Allow","Action":"iam:CreateServiceLinkedRole","Resource":"*",
 "Condition":{"StringEquals":{"iam:AWSServiceName":"spot.amazonaws.com"}}}
JSON
)

# state_write RESOURCE...: checkpoints, history and backups of the given stack paths.
state_write() {
  local resources
  resources=$(for r in "$@"; do printf '"arn:aws:s3:::%s/%s",' "$bucket" "$r"; done | sed 's/,$//')
  printf '{"Sid":"StateWrite","Effect":"Allow","Action":["s3:PutObject","s3:DeleteObject"],"Resource":[%s]}' \
    "$resources"
}

# put_role NAME POLICY_STATEMENTS SUB...
put_role() {
  local name=$1 statements=$2
  shift 2
  if aws iam get-role --role-name "$name" >/dev/null 2>&1; then
    aws iam update-assume-role-policy --role-name "$name" --policy-document "$(trust_policy "$@")"
  else
    aws iam create-role --role-name "$name" --max-session-duration 3600 \
      --description "GitHub Actions ($repo): $project CI" \
      --assume-role-policy-document "$(trust_policy "$@")" >/dev/null
  fi
  aws iam put-role-policy --role-name "$name" --policy-name "$project-ci" \
    --policy-document "{\"Version\":\"2012-10-17\",\"Statement\":[$statements]}"
  echo "arn:aws:iam::$account:role/$name"
}

echo "==> roles"
preview_arn=$(put_role "$prefix-preview" "$read_statements" environment:preview)
review_arn=$(put_role "$prefix-review" \
  "$read_statements,$deploy_statements,$(state_write ".pulumi/*$project/pr-*")" environment:review)
deploy_arn=$(put_role "$prefix-deploy" "$read_statements,$deploy_statements,$(state_write ".pulumi/*")" \
  environment:production)

cat <<EOF

Done. Set these repository variables (Settings > Secrets and variables > Actions > Variables):
  PULUMI_BACKEND_URL    s3://$bucket?region=$region
  AWS_REGION            $region
  AWS_PREVIEW_ROLE_ARN  $preview_arn
  AWS_REVIEW_ROLE_ARN   $review_arn
  AWS_DEPLOY_ROLE_ARN   $deploy_arn
and the repository secret PULUMI_CONFIG_PASSPHRASE (e.g. openssl rand -base64 32; keep a copy).
EOF
